import numpy as np
import pytest

from clipdef import detect


def brute(x, ref=None):
    """Sorted distances and neighbour indices with self excluded by index (brute force, float64)."""
    self_query = ref is None
    ref = x if ref is None else ref
    d = np.sqrt(((x[:, None, :].astype(np.float64) - ref[None, :, :]) ** 2).sum(-1))
    if self_query:
        d[np.arange(len(x)), np.arange(len(x))] = np.inf
    order = np.argsort(d, axis=1, kind="stable")
    return np.take_along_axis(d, order, 1), order


def brute_scores(x, k, ref=None):
    d, o = brute(x, ref)
    d, o = d[:, :k], o[:, :k]
    rd, _ = brute(x if ref is None else ref)
    rd = rd[:, :k]
    dk, ref_dk = d[:, -1], rd[:, -1]
    lid = lambda r: -1 / np.log(r / r[:, -1:]).mean(1)
    ratio = dk[:, None] / ref_dk[o]
    lid_ref = lid(rd)[o]
    return {"kdist": dk, "lid": lid(d), "slof": ratio.mean(1),
            "dao": (ratio ** lid_ref).mean(1), "dao_log": (lid_ref * np.log(ratio)).mean(1)}


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    return rng.normal(size=(120, 8)).astype(np.float32)


@pytest.mark.parametrize("method", ["kdist", "lid", "slof", "dao", "dao_log"])
@pytest.mark.parametrize("k", [1, 5, 16])
def test_scores_match_brute_force(small, method, k):
    if method in ("lid", "dao", "dao_log") and k == 1:
        with pytest.raises(ValueError, match="needs k ≥ 2"):
            detect.score(small, method.replace("_log", ""), k=1)
        return
    want = brute_scores(small, k)[method]
    got = detect.score(small, "dao", k=k, form="log") if method == "dao_log" else \
        detect.score(small, "dao", k=k, form="power") if method == "dao" else detect.score(small, method, k=k)
    assert np.allclose(got, want, rtol=2e-4, atol=1e-5)


def test_separate_reference_set(small):
    ref = small[:80]
    queries = small[80:] + 0.01
    for method in ("kdist", "slof", "dao"):
        want = brute_scores(queries, 8, ref=ref)[method]
        assert np.allclose(detect.score(queries, method, k=8, ref=ref, form="power"), want, rtol=2e-4, atol=1e-5)


def test_joint_image_text_mode_against_brute_force():
    """Image i's reference is every other image and every caption but its own (the paper's code); a caption's
    statistics likewise leave out its own image."""
    rng = np.random.default_rng(1)
    img = rng.normal(size=(40, 6)).astype(np.float32)
    txt = (img + 0.3 * rng.normal(size=img.shape)).astype(np.float32)
    joint = np.concatenate([img, txt]).astype(np.float64)
    d = np.sqrt(((joint[:, None, :] - joint[None]) ** 2).sum(-1))
    rows = np.arange(80)
    d[rows, rows] = np.inf                  # itself
    d[rows, (rows + 40) % 80] = np.inf      # its pair's other half
    order = np.argsort(d, 1, kind="stable")[:, :5]
    dk = np.take_along_axis(d, order, 1)[:, -1]
    want = (dk[:40, None] / dk[order[:40]]).mean(1)
    assert np.allclose(detect.score(img, "slof", k=5, texts=txt), want, rtol=2e-4)
    assert not (order[:40] == np.arange(40, 80)[:, None]).any()


def test_duplicates_exclude_self_by_index():
    x = np.array([[0, 0], [0, 0], [0, 0], [1, 0], [5, 5]], dtype=np.float32)
    dist, idx = detect.knn(x, 2, method="exact")
    for i in range(len(x)):
        assert i not in idx[i]
    assert np.allclose(dist[0], [0, 0]) and set(idx[0]) == {1, 2}
    s = detect.score(x, "slof", k=2)
    assert np.isfinite(s).all() and s.argmax() == 4


def test_planted_outliers_rank_on_top():
    rng = np.random.default_rng(3)
    centres = rng.normal(scale=6, size=(5, 16))
    clean = (centres[rng.integers(0, 5, 1000)] + rng.normal(size=(1000, 16))).astype(np.float32)
    outliers = (rng.normal(scale=6, size=(10, 16))).astype(np.float32)
    x = np.concatenate([clean, outliers])
    truth = np.r_[np.zeros(1000, bool), np.ones(10, bool)]
    for method in ("kdist", "slof", "dao", "iforest"):
        assert detect.auroc(detect.score(x, method, k=16), truth) > 0.95, method
    assert detect.auroc(detect.score(x, "lid", k=16), truth) > 0.7


def test_approximate_path_close_to_exact():
    rng = np.random.default_rng(4)
    centres = rng.normal(scale=4, size=(20, 32))
    x = (centres[rng.integers(0, 20, 5000)] + rng.normal(size=(5000, 32))).astype(np.float32)
    x[:25] = rng.normal(scale=4, size=(25, 32))
    truth = np.zeros(5000, bool)
    truth[:25] = True
    _, exact_idx = detect.knn(x, 16, method="exact")
    _, approx_idx = detect.knn(x, 16, method="approx", nprobe=16)
    recall = np.mean([len(set(a) & set(b)) / 16 for a, b in zip(exact_idx, approx_idx)])
    assert recall > 0.95
    for method in ("slof", "dao"):
        a = detect.auroc(detect.score(x, method, knn_method="exact"), truth)
        b = detect.auroc(detect.score(x, method, knn_method="approx", nprobe=16), truth)
        assert abs(a - b) < 0.01


def test_batched_search_equals_one_batch(small):
    a = detect.knn(small, 7, batch_size=13, method="exact")
    b = detect.knn(small, 7, batch_size=10_000, method="exact")
    assert np.array_equal(a[1], b[1]) and np.allclose(a[0], b[0])


def test_spectral_signature_by_hand():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    x[:10, 0] += 8  # a direction shared by the "poisons"
    s = detect.score(x, "spectral")
    c = x - x.mean(0)
    v = np.linalg.svd(c, full_matrices=False)[2][0]
    assert np.allclose(s, (c @ v) ** 2, rtol=1e-4)
    assert detect.auroc(s, np.r_[np.ones(10, bool), np.zeros(190, bool)]) > 0.95
    per_class = detect.score(x, "spectral", labels=np.arange(200) % 2)
    assert per_class.shape == (200,)


def test_metrics_by_hand():
    scores = [0.1, 0.4, 0.35, 0.8]
    truth = [0, 0, 1, 1]
    assert detect.auroc(scores, truth) == pytest.approx(0.75)
    # ranking: 0.8 (P), 0.4 (N), 0.35 (P), 0.1 (N) → AP = (1/1 + 2/3) / 2
    assert detect.auprc(scores, truth) == pytest.approx((1 + 2 / 3) / 2)
    assert detect.fpr_at_tpr(scores, truth, 1.0) == pytest.approx(0.5)


@pytest.mark.parametrize("x,k,msg", [
    (np.zeros((1, 4)), 1, "at least 2 rows"),
    (np.zeros((5, 4)), 5, "only 4 other points"),
    (np.zeros((5, 4)), 0, "positive integer"),
    (np.zeros(5), 1, "2-D array"),
])
def test_bad_inputs(x, k, msg):
    with pytest.raises(ValueError, match=msg):
        detect.score(x, "slof", k=k)


def test_non_finite_and_unknown_method():
    x = np.random.default_rng(0).normal(size=(10, 3))
    x[3, 1] = np.nan
    x[7, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 row\(s\) with NaN or inf \(first: row 3\)"):
        detect.score(x, "dao")
    with pytest.raises(ValueError, match="valid: kdist, lid, slof, dao, iforest, spectral"):
        detect.score(np.zeros((4, 2)), "lof")
    with pytest.raises(ValueError, match="only one class"):
        detect.auroc([0.1, 0.2], [1, 1])


def _low_dim_clusters(n, d, seed, intrinsic=4):
    """Clusters on random low-dimensional patches (as embeddings are), a few points pushed off their patch."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3, size=(10, d))
    bases = rng.normal(size=(10, intrinsic, d)) / np.sqrt(intrinsic)
    label = rng.integers(0, 10, n)
    x = centres[label] + np.einsum("ni,nid->nd", rng.normal(size=(n, intrinsic)), bases[label])
    x += 0.05 * rng.normal(size=(n, d))
    truth = np.zeros(n, bool)
    truth[: n // 100] = True
    x[truth] += rng.normal(size=(truth.sum(), d)) * 1.5 / np.sqrt(d) * np.sqrt(intrinsic)
    return x.astype(np.float32), truth


def test_approximate_path_through_a_pca_projection():
    """d > pca_dim: candidates come from the projection, distances are re-computed exactly in the full space."""
    x, truth = _low_dim_clusters(4000, 96, seed=6)
    exact_d, exact_i = detect.knn(x, 16, method="exact")
    approx_d, approx_i = detect.knn(x, 16, method="approx", pca_dim=16)
    recall = np.mean([len(set(a) & set(b)) / 16 for a, b in zip(exact_i, approx_i)])
    assert recall > 0.95
    # every returned distance is the exact distance to the returned neighbour
    true_d = np.linalg.norm(x[:, None, :] - x[approx_i], axis=-1)
    assert np.allclose(approx_d, true_d, rtol=1e-3, atol=1e-3)
    assert (np.diff(approx_d, axis=1) >= -1e-5).all() and not (approx_i == np.arange(len(x))[:, None]).any()
    for method in ("slof", "dao"):
        a = detect.auroc(detect.score(x, method, knn_method="exact"), truth)
        b = detect.auroc(detect.score(x, method, knn_method="approx", pca_dim=16), truth)
        assert abs(a - b) < 0.01, (method, a, b)


def test_approximate_path_with_a_separate_reference_and_tiny_lists():
    x, _ = _low_dim_clusters(600, 24, seed=7)
    ref, queries = x[:500], x[500:]
    got = detect.score(queries, "slof", k=8, ref=ref, knn_method="approx", pca_dim=8)
    want = detect.score(queries, "slof", k=8, ref=ref, knn_method="exact")
    assert np.corrcoef(got, want)[0, 1] > 0.95
    # ~60 lists of ~8 points searched with nprobe=1: rows with fewer than k candidates fall back to exact search
    d, i = detect.knn(queries, 8, ref=ref, method="approx", nprobe=1, pca_dim=8)
    assert (i >= 0).all() and np.isfinite(d).all()
    assert np.allclose(d, np.linalg.norm(queries[:, None, :] - ref[i], axis=-1), rtol=1e-3, atol=1e-3)


def test_image_text_mode_is_one_search_of_the_joint_reference():
    rng = np.random.default_rng(8)
    img = rng.normal(size=(300, 12)).astype(np.float32)
    txt = (img + 0.2 * rng.normal(size=img.shape)).astype(np.float32)
    for method in ("exact", "approx"):
        s = detect.score(img, "dao", k=6, texts=txt, knn_method=method, pca_dim=6)
        assert s.shape == (300,) and np.isfinite(s).all()
    with pytest.raises(ValueError, match="nprobe, refine and pca_dim"):
        detect.knn(img, 4, method="approx", nprobe=0)


def _official_by_hand(img, txt, k):
    """The paper's code (backdoor_sample_detector/slof.py, dao.py) written out on one small batch."""
    b = len(img)
    full = np.concatenate([img, txt]).astype(np.float64)
    def others(q, ref):
        d = np.sqrt(((q[:, None] - ref[None]) ** 2).sum(-1))
        return d[~np.eye(b, dtype=bool)].reshape(b, b - 1)
    d = np.concatenate([others(img, img), others(img, txt)], 1)
    idx = np.argsort(d, 1, kind="stable")
    a = np.take_along_axis(d, idx, 1)
    a_full = np.sort(np.sqrt(((full[:, None] - full[None]) ** 2).sum(-1)), 1)
    lid_full = -k / np.log(a_full[:, :k] / a_full[:, k:k + 1] + 1e-4).sum(1)
    slof, dao = np.empty(b), np.empty(b)
    for i in range(b):
        rows = idx[i, :k]            # positions in the shortened list, read as rows of the full matrix
        slof[i] = np.mean(a[i, k] / a_full[rows, k])
        dao[i] = np.mean(lid_full[rows] * np.log(a[i, k] / a_full[rows, k]))
    return slof, dao


def test_official_scores_follow_the_papers_code_and_differ_from_the_formulas():
    rng = np.random.default_rng(5)
    img = rng.normal(size=(30, 4)).astype(np.float32)
    txt = (img + 0.5 * rng.normal(size=img.shape)).astype(np.float32)
    slof, dao = _official_by_hand(img, txt, 5)
    assert np.allclose(detect.official_scores(img, "slof", 5, texts=txt), slof, rtol=1e-5)
    assert np.allclose(detect.official_scores(img, "dao", 5, texts=txt), dao, rtol=1e-5)
    ours = detect.score(img, "slof", 5, texts=txt)
    assert not np.allclose(ours, slof)                    # the shifted reading changes the scores ...
    assert np.corrcoef(ours, slof)[0, 1] > 0.3            # ... but not beyond recognition
    with pytest.raises(ValueError, match="computes kdist, lid, slof and dao"):
        detect.official_scores(img, "iforest", 5)


def test_batched_scores_each_point_against_its_own_batch():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(100, 3)).astype(np.float32)
    s = detect.batched(x, "kdist", 3, batch_size=40, seed=1)
    order = np.random.default_rng(1).permutation(100)
    first, rest = order[:40], order[40:]   # 100 = 40 + 60: the short last batch joins the one before
    assert np.allclose(s[first], detect.score(x[first], "kdist", 3))
    assert np.allclose(s[rest], detect.score(x[rest], "kdist", 3))


def test_auroc_at_proportion_keeps_poisons_rare_and_a_clean_reference_isolates_them():
    rng = np.random.default_rng(7)
    clean = rng.normal(size=(600, 4))
    poisons = 4.0 + 0.05 * rng.normal(size=(60, 4))      # a tight cluster far away: each other's neighbours
    x = np.concatenate([clean, poisons]).astype(np.float32)
    truth = np.r_[np.zeros(600, bool), np.ones(60, bool)]
    crowded = detect.auroc(detect.score(x, "slof", 8), truth)
    rare = detect.auroc_at_proportion(x, truth, "slof", 0.002, 8, batch_size=200, draws=4)
    alone = detect.auroc_at_proportion(x, truth, "slof", 0.0, 8, batch_size=200, draws=4)
    assert crowded < 0.8 and rare.min() > 0.95 and alone.min() > 0.95 and len(rare) == 4
    with pytest.raises(ValueError, match="proportion must lie in"):
        detect.auroc_at_proportion(x, truth, "slof", 1.0)


def test_neighbourhood_purity_and_kdist_ratio():
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [10, 10], [10, 10.1]], dtype=np.float32)
    truth = np.array([0, 0, 0, 0, 1, 1], bool)
    hood = detect.neighbourhood(x, truth, k=1)
    assert hood["neighbour_purity"] == 1.0 and hood["kdist_ratio"] < 1   # a tight pair of poisons


def test_auroc_at_proportion_draws_the_same_samples_in_processes_and_by_hand():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    truth = np.zeros(300, bool)
    truth[:30] = True
    x[:30] += 1.0
    for share in (0.0, 0.01):
        one = detect.auroc_at_proportion(x, truth, "kdist", share, 5, batch_size=100, draws=3, seed=2)
        two = detect.auroc_at_proportion(x, truth, "kdist", share, 5, batch_size=100, draws=3, seed=2, workers=2)
        assert np.array_equal(one, two)
    # draw 0 at 1 %, by hand: every clean sample and 3 poisons chosen by the seed's generator, in batches of 100
    clean, poisons = np.flatnonzero(~truth), np.flatnonzero(truth)
    rows = np.concatenate([clean, np.random.default_rng(2).choice(poisons, 3, replace=False)])
    by_hand = detect.auroc(detect.batched(x[rows], "kdist", 5, batch_size=100, seed=2), truth[rows])
    assert one[0] == by_hand
