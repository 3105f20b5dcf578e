"""Density-ratio detection of poisoned samples in CLIP embedding space (Huang et al., ICLR 2025).

Backdoor samples sit in sparse neighbourhoods of the embedding space of a CLIP trained on them: their k-NN distances
are large *compared with those of their neighbours*. ``score(embeddings, method, k)`` returns one score per sample,
higher meaning more likely poisoned.

One convention for every method (the official code, HanxunH/Detect-CLIP-Backdoor-Samples, mixes two: its query
distances leave the query out, its neighbours' include their zero distance to themselves): r_i(q) is the distance from
q to its i-th nearest *other* point of the reference set — q itself is never its own neighbour — and
d_k(q) = r_k(q). Distances are Euclidean, as in the paper's code (embeddings are not normalised unless you do it).

* ``kdist``  d_k(q)
* ``lid``    LID(q) = −( (1/k) Σ_{i≤k} ln(r_i(q)/r_k(q)) )⁻¹                      (MLE, Levina–Bickel)
* ``slof``   (1/k) Σ_{o∈N_k(q)} d_k(q)/d_k(o)                                     (simplified LOF)
* ``dao``    (1/k) Σ_{o∈N_k(q)} (d_k(q)/d_k(o))^{LID(o)}                          (Anderberg et al., SDM 2024);
             default ``form="log"``: (1/k) Σ LID(o)·ln(d_k(q)/d_k(o)), what the paper's code computes
* ``iforest``  −IsolationForest.score_samples (100 trees)
* ``spectral`` spectral signatures (Tran et al., 2018): squared projection of the centred embedding on the top
               right-singular vector, per class when labels are given

Nearest neighbours come from faiss: an exact flat index searched in query batches (memory stays bounded), or, for
large N (``method="auto"`` switches at ``APPROX_THRESHOLD`` points), candidates from an IVF index on a PCA
projection re-ranked by exact distances (see :class:`_Searcher`; benchmarks/ measures speed and accuracy).
"""

from __future__ import annotations

import math

import numpy as np

METHODS = ("kdist", "lid", "slof", "dao", "iforest", "spectral")
LID_K = 64                   # the paper's code scores its LID detector with k = 64 (extract_bd_scores.py)
APPROX_THRESHOLD = 200_000   # above this many reference points, "auto" uses the approximate search
_TINY = 1e-12                # distances below this count as zero (duplicates)
_CAP = 1e6                   # non-finite scores (all-duplicate neighbourhoods) are mapped to ±_CAP


def methods() -> tuple[str, ...]:
    return METHODS


def _as_matrix(x, what: str = "embeddings") -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (N, d), got shape {x.shape}")
    if len(x) < 2:
        raise ValueError(f"{what} need at least 2 rows to have neighbours, got {len(x)}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"{what} contain {int(bad.sum())} row(s) with NaN or inf (first: row "
                         f"{int(np.flatnonzero(bad)[0])}); drop or fix them before scoring")
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_k(k: int, available: int) -> None:
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > available:
        raise ValueError(f"k = {k} but each point has only {available} other points as neighbours; use k ≤ "
                         f"{available} (the paper uses k = 16)")


# ---------------------------------------------------------------------------------------------------------------
# k nearest neighbours
# ---------------------------------------------------------------------------------------------------------------

class _Searcher:
    """Squared Euclidean k-NN search of query batches in a fixed reference set.

    * exact: a faiss flat index (BLAS matrix products; the reference is copied once into the index).
    * approx: candidates from an IVF index built on a PCA projection of the reference (``pca_dim`` dimensions,
      ``nlist ≈ 4√N`` lists, ``nprobe`` lists searched), then re-ranked by their *exact* distances in the full
      space. Distances are therefore always exact; only a true neighbour missing from the candidates is an
      error (it is replaced by the next-nearest candidate). Rows with too few candidates fall back to exact.
    """

    def __init__(self, ref: np.ndarray, approx: bool, nprobe: int = 16, seed: int = 0, pca_dim: int = 128,
                 refine: int = 2):
        import faiss

        self.ref, self.approx = ref, approx
        self._flat = None
        if not approx:
            self._flat = faiss.IndexFlatL2(ref.shape[1])
            self._flat.add(ref)
            return
        if nprobe < 1 or refine < 1 or pca_dim < 1:
            raise ValueError(f"need nprobe, refine and pca_dim ≥ 1, got {nprobe}, {refine}, {pca_dim}")
        n, d = ref.shape
        rng = np.random.default_rng(seed)
        self.refine = refine
        self.ref_sq = np.einsum("ij,ij->i", ref, ref)
        self.mean, self.proj = _pca(ref[rng.choice(n, min(n, 65_536), replace=False)], min(pca_dim, d))
        reduced = self.project(ref)
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 8))
        self.ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(reduced.shape[1]), reduced.shape[1], nlist)
        self.ivf.cp.niter = 10  # k-means only partitions the space; more iterations barely change recall
        self.ivf.cp.min_points_per_centroid = 1  # small N: no warning; large N trains on 32 points a list
        self.ivf.train(reduced[rng.choice(n, min(n, 32 * nlist), replace=False)])
        self.ivf.add(reduced)
        self.ivf.nprobe = min(nprobe, nlist)

    def project(self, x: np.ndarray, block: int = 65_536) -> np.ndarray:
        if self.proj is None:
            return x
        out = np.empty((len(x), self.proj.shape[1]), dtype=np.float32)
        for s in range(0, len(x), block):
            out[s:s + block] = (x[s:s + block] - self.mean) @ self.proj
        return out

    def search(self, queries: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances, indices), each (len(queries), want), nearest first."""
        if not self.approx:
            return self._flat.search(queries, want)
        _, cand = self.ivf.search(self.project(queries), min(len(self.ref), self.refine * want))
        d2 = np.full(cand.shape, np.inf, dtype=np.float32)
        for s in range(0, len(queries), 1024):  # blocks keep the gathered (B, candidates, d) tensor small
            q, c = queries[s:s + 1024], cand[s:s + 1024]
            valid = c >= 0
            rows = self.ref[np.where(valid, c, 0)]
            dots = np.einsum("bd,bkd->bk", q, rows)
            d2[s:s + 1024] = np.where(valid, np.einsum("ij,ij->i", q, q)[:, None] + self.ref_sq[np.where(valid, c, 0)]
                                      - 2 * dots, np.inf)
        order = np.argsort(d2, axis=1, kind="stable")[:, :want]
        d2, ix = np.take_along_axis(d2, order, 1), np.take_along_axis(cand, order, 1)
        short = ~np.isfinite(d2).all(1)
        if short.any():  # too few candidates (tiny lists): search those rows exactly
            import faiss

            if self._flat is None:
                self._flat = faiss.IndexFlatL2(self.ref.shape[1])
                self._flat.add(self.ref)
            d2[short], ix[short] = self._flat.search(np.ascontiguousarray(queries[short]), want)
        return np.maximum(d2, 0), ix


def _pca(sample: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean and the top-``dim`` principal directions (d, dim) of a sample; no projection when dim == d."""
    mean = sample.mean(0, dtype=np.float64).astype(np.float32)
    if dim >= sample.shape[1]:
        return mean, None
    centred = (sample - mean).astype(np.float64)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    return mean, np.ascontiguousarray(vectors[:, ::-1][:, :dim], dtype=np.float32)


def _searcher(ref: np.ndarray, method: str = "auto", nprobe: int = 16, seed: int = 0, pca_dim: int = 128,
              refine: int = 2) -> _Searcher:
    if method not in ("auto", "exact", "approx"):
        raise ValueError(f"method must be 'auto', 'exact' or 'approx', got {method!r}")
    approx = method == "approx" or (method == "auto" and len(ref) > APPROX_THRESHOLD)
    return _Searcher(ref, approx, nprobe, seed, pca_dim, refine)


def knn(x, k: int, ref=None, method: str = "auto", batch_size: int = 16384, nprobe: int = 16, seed: int = 0,
        progress: bool = False, pca_dim: int = 128, refine: int = 2,
        partner: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distances (N, k) and indices (N, k) of the k nearest neighbours of each row of ``x`` in ``ref``.

    With ``ref=None`` the reference is ``x`` itself and each point is excluded from its own neighbours — by index,
    so exact duplicates of a point still count as its neighbours (at distance 0) — and, with ``partner`` (one
    reference index per row), from its partner's (an image's own caption). Distances are Euclidean.
    ``method``: "exact", "approx" (see :class:`_Searcher`; ``nprobe``, ``pca_dim``, ``refine`` tune it) or
    "auto" (approximate above ``APPROX_THRESHOLD`` reference points). Queries go in batches of ``batch_size``, so
    memory beyond the index stays bounded."""
    x = _as_matrix(x)
    self_query = ref is None
    ref_m = x if self_query else _as_matrix(ref, "reference embeddings")
    if ref_m.shape[1] != x.shape[1]:
        raise ValueError(f"queries have dimension {x.shape[1]} but the reference has {ref_m.shape[1]}")
    if partner is not None and (not self_query or np.shape(partner) != (len(x),)):
        raise ValueError("partner gives one reference index per row of x, and needs the self-reference (ref=None)")
    _check_k(k, len(ref_m) - (1 if self_query else 0) - (partner is not None))
    searcher = _searcher(ref_m, method, nprobe, seed, pca_dim, refine)
    return _search_all(searcher, x, k, exclude_self=self_query, batch_size=batch_size, progress=progress,
                       partner=partner)


def _search_all(searcher: "_Searcher", x: np.ndarray, k: int, exclude_self: bool, batch_size: int = 16384,
                progress: bool = False, partner: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-NN of every row of ``x`` in batches; with ``exclude_self``, row i of ``x`` is row i of the reference and
    is removed from its own neighbours by index (and so is ``partner[i]``, when given)."""
    from clipdef.env import progress_bar

    want = k + int(exclude_self) + int(partner is not None)
    dist = np.empty((len(x), k), dtype=np.float32)
    idx = np.empty((len(x), k), dtype=np.int64)
    starts = range(0, len(x), batch_size)
    for start in progress_bar(starts, enabled=progress, desc="k-NN search", total=len(starts)):
        stop = min(start + batch_size, len(x))
        d2, ix = searcher.search(x[start:stop], want)
        banned = ([np.arange(start, stop)] if exclude_self else []) + \
            ([np.asarray(partner[start:stop])] if partner is not None else [])
        if banned:
            d2, ix = _drop(d2, ix, banned, k)
        dist[start:stop] = np.sqrt(np.maximum(d2, 0))
        idx[start:stop] = ix
    return dist, idx


def _drop(d2: np.ndarray, ix: np.ndarray, banned: list[np.ndarray], k: int):
    """The first ``k`` results of each row that are none of its ``banned`` indices (its own, its partner's). When
    a banned index is absent (many duplicates, or an approximate search that missed it), the farthest result goes
    instead."""
    bad = np.zeros(ix.shape, dtype=bool)
    for own in banned:
        bad |= ix == own[:, None]
    keep = np.argsort(bad, axis=1, kind="stable")[:, :k]  # unbanned results first, in distance order
    return np.take_along_axis(d2, keep, 1), np.take_along_axis(ix, keep, 1)


# ---------------------------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------------------------

def lid_mle(dist: np.ndarray) -> np.ndarray:
    """LID(q) = −( (1/k) Σ_i ln(r_i/r_k) )⁻¹ from sorted neighbour distances (N, k).

    Zero distances (duplicates) are clamped to a tiny epsilon; if all k distances are equal the estimate is
    infinite (a degenerate neighbourhood) and is capped."""
    r = np.maximum(dist.astype(np.float64), _TINY)
    logs = np.log(r / r[:, -1:]).mean(1)
    with np.errstate(divide="ignore"):
        lid = -1.0 / logs
    return np.where(np.isfinite(lid), lid, _CAP)


def _neighbour_stats(x, k, ref, knn_kw):
    """Neighbour distances and indices of the queries, and the neighbour distances of every reference point."""
    if ref is None:
        dist, idx = knn(x, k, **knn_kw)
        return dist, idx, dist
    # A separate reference: one index, searched by the queries and, self excluded, by the reference itself.
    _check_k(k, len(ref) - 1)
    if ref.shape[1] != x.shape[1]:
        raise ValueError(f"queries have dimension {x.shape[1]} but the reference has {ref.shape[1]}")
    search_kw = {key: value for key, value in knn_kw.items() if key in ("batch_size", "progress")}
    searcher = _searcher(ref, **{key: value for key, value in knn_kw.items() if key not in search_kw})
    dist, idx = _search_all(searcher, x, k, exclude_self=False, **search_kw)
    ref_dist, _ = _search_all(searcher, ref, k, exclude_self=True, **search_kw)
    return dist, idx, ref_dist


def _finite(scores: np.ndarray) -> np.ndarray:
    """Map NaN/+inf to a large finite value and −inf to a small one (the reference maps them to 1000 / 0)."""
    return np.nan_to_num(scores, nan=_CAP, posinf=_CAP, neginf=-_CAP)


def score(embeddings, method: str, k: int = 16, ref=None, texts=None, labels=None, form: str = "log",
          knn_method: str = "auto", seed: int = 0, progress: bool = False, **knn_kw) -> np.ndarray:
    """Poison scores, higher = more likely poisoned, one per row of ``embeddings`` (N, d).

    ``ref``: a separate (clean) reference set; by default the embeddings themselves, each point excluded from its
    own neighbourhood. ``texts``: the paper's image+text mode — the reference becomes images ∪ captions (row i of
    ``texts`` is the caption of image i); as in the paper's code, an image's own caption is not its neighbour (nor,
    for the reference's statistics, a caption's own image).
    ``labels``: per-class scoring for ``spectral``. ``form``: DAO's "log" (the paper's code, the default: the mean
    of LID(o)·ln(d_k(q)/d_k(o)), whose scale does not explode with the LID) or "power" (its definition, Anderberg et
    al.: the mean of (d_k(q)/d_k(o))^LID(o))."""
    if method not in METHODS:
        raise ValueError(f"unknown detection method {method!r}; valid: {', '.join(METHODS)}")
    x = _as_matrix(embeddings)
    if method == "iforest":
        return _iforest(x, ref, seed)
    if method == "spectral":
        return _spectral(x, labels)
    if method in ("lid", "dao") and k < 2:
        raise ValueError(f"{method} needs k ≥ 2: a local intrinsic dimension is estimated from at least two "
                         "neighbour distances (the paper uses k = 16)")
    knn_kw = {"method": knn_method, "seed": seed, "progress": progress, **knn_kw}
    if texts is not None:
        if ref is not None:
            raise ValueError("give either texts= (image+text reference) or ref=, not both")
        t = _as_matrix(texts, "text embeddings")
        if t.shape != x.shape:
            raise ValueError(f"texts must match the embeddings' shape {x.shape}, got {t.shape}")
        # The reference is images ∪ captions and image i is its row i: one search of the whole reference, each
        # point's own row and its pair's excluded, gives both the images' neighbours (its first N rows) and every
        # reference point's d_k.
        n = len(x)
        pairs = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
        ref_dist, ref_idx = knn(np.concatenate([x, t]), k, partner=pairs, **knn_kw)
        dist, idx = ref_dist[:len(x)], ref_idx[:len(x)]
    else:
        ref_m = None if ref is None else _as_matrix(ref, "reference embeddings")
        dist, idx, ref_dist = _neighbour_stats(x, k, ref_m, knn_kw)
    d_k = dist[:, -1].astype(np.float64)
    if method == "kdist":
        return d_k
    if method == "lid":
        return lid_mle(dist)
    ref_dk = np.maximum(ref_dist[:, -1].astype(np.float64), _TINY)
    ratio = np.maximum(d_k[:, None], _TINY) / ref_dk[idx]
    if method == "slof":
        return _finite(ratio.mean(1))
    if form not in ("power", "log"):
        raise ValueError(f"DAO form must be 'power' or 'log', got {form!r}")
    lid_ref = lid_mle(ref_dist)[idx]
    log_terms = lid_ref * np.log(ratio)
    if form == "log":
        return _finite(log_terms.mean(1))
    # (1/k) Σ exp(LID·ln ratio), computed as a log-sum-exp so large LIDs do not overflow before the mean
    m = log_terms.max(1, keepdims=True)
    return _finite(np.exp(np.minimum(m[:, 0] + np.log(np.exp(log_terms - m).mean(1)), 700)))


def official_scores(embeddings, method: str, k: int = 16, texts=None) -> np.ndarray:
    """The scores as the paper's code computes them on one batch, its reference (HanxunH/Detect-CLIP-Backdoor-
    Samples, ``backdoor_sample_detector/{k_distance,lid_detection,slof,dao}.py``), for comparison with
    :func:`score`. Three things differ from the formulas:

    * the query's distances leave it (and, with ``texts``, its own caption) out, and its k-distance is the
      (k+1)-th of them (``a[:, k]``);
    * its neighbours' indices point into that shortened list but are read as rows of the full reference, so each
      neighbour past the query's own position is read from the row of the point before it (in image+text mode
      the captions' part shifts by one more row per image);
    * the neighbours' statistics come from the sorted full distance matrix, self included: d_k(o) is the k-th
      other neighbour, but LID(o) averages ln(r_i/r_k) over a list that starts with o's zero distance to itself
      (+1e-4 inside the log), which makes that LID nearly constant.

    DAO is the log form ``mean LID(o)·ln(d_k(q)/d_k(o))``; NaN and +inf become 1000, −inf 0. Exact distances
    (float64), the batch fully in memory: meant for batches of hundreds to a few thousand."""
    if method not in ("kdist", "lid", "slof", "dao"):
        raise ValueError(f"official_scores computes kdist, lid, slof and dao, not {method!r}")
    x = _as_matrix(embeddings).astype(np.float64)
    b = len(x)
    full = x if texts is None else np.concatenate([x, _as_matrix(texts, "text embeddings").astype(np.float64)])
    _check_k(k + 1, b - 1)

    from scipy.spatial.distance import cdist

    dist_full = cdist(full, full)   # exact pairwise distances, once (rows: the batch's images, then captions)

    def others(block):  # the images' distances to one block with the diagonal (itself, or its caption) removed
        return block[~np.eye(b, dtype=bool)].reshape(b, b - 1)

    d = others(dist_full[:b, :b]) if texts is None else \
        np.concatenate([others(dist_full[:b, :b]), others(dist_full[:b, b:])], axis=1)
    order = np.argsort(d, axis=1, kind="stable")
    a = np.take_along_axis(d, order, 1)

    def lid(sorted_d):
        with np.errstate(divide="ignore", invalid="ignore"):
            return -k / np.log(sorted_d[:, :k] / sorted_d[:, k:k + 1] + 1e-4).sum(1)

    if method == "kdist":
        return a[:, k]
    if method == "lid":
        return lid(a)
    a_full = np.sort(dist_full, axis=1)
    neighbours = order[:, :k]          # positions in the shortened list, used as rows of the full matrix
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = a[:, k:k + 1] / a_full[neighbours, k]
        scores = ratio.mean(1) if method == "slof" else (lid(a_full)[neighbours] * np.log(ratio)).mean(1)
    return np.nan_to_num(scores, nan=1000.0, posinf=1000.0, neginf=0.0)


def batched(embeddings, method: str, k: int = 16, texts=None, batch_size: int = 512, seed: int = 0,
            official: bool = False, **score_kw) -> np.ndarray:
    """Scores with each point's reference the random batch of ``batch_size`` it falls in, as the paper scores
    CC3M (batches of 512 per GPU): ``official`` for :func:`official_scores`, else :func:`score` on the batch. The
    last, short batch joins the one before, so every reference holds at least ``batch_size`` points."""
    x = _as_matrix(embeddings)
    t = None if texts is None else _as_matrix(texts, "text embeddings")
    order = np.random.default_rng(seed).permutation(len(x))
    cuts = list(range(0, len(x), batch_size))[1:]
    if cuts and len(x) - cuts[-1] < batch_size:
        cuts = cuts[:-1]
    out = np.empty(len(x))
    for rows in np.split(order, cuts):
        xt = None if t is None else t[rows]
        out[rows] = official_scores(x[rows], method, k, texts=xt) if official else \
            score(x[rows], method, k, texts=xt, seed=seed, **score_kw)
    return out


def auroc_at_proportion(embeddings, is_poisoned, method: str, proportion: float, k: int = 16, texts=None,
                        batch_size: int = 512, draws: int = 20, seed: int = 0, workers: int = 1,
                        **batched_kw) -> np.ndarray:
    """AUROC when poisons make up ``proportion`` of the data, as in the paper's pre-training (0.01–0.1 %): each
    draw keeps every clean sample and a random subset of the poisons of that share (at least one), scores them in
    random batches (:func:`batched`) and computes the AUROC. Returns the ``draws`` AUROCs. ``proportion=0``: each
    poison is scored in a batch of clean samples alone. ``workers`` processes score the draws (the same AUROCs as
    one: every draw's samples are chosen first, in order). An evaluation protocol: it reads the ground truth to
    choose the poisons, as a defender could not."""
    if not 0 <= proportion < 1:
        raise ValueError(f"proportion must lie in [0, 1), got {proportion}")
    x, truth = _as_matrix(embeddings), np.asarray(is_poisoned, dtype=bool)
    t = None if texts is None else _as_matrix(texts, "text embeddings")
    clean, poisons = np.flatnonzero(~truth), np.flatnonzero(truth)
    if not len(clean) or not len(poisons):
        raise ValueError("auroc_at_proportion needs clean samples and poisons")
    rng = np.random.default_rng(seed)
    n_poison = max(1, round(proportion / (1 - proportion) * len(clean))) if proportion else 1
    plans = []   # per draw: the scored sets, each (rows, batch size, how many of its first scores to keep)
    for _ in range(draws):
        if proportion:
            plans.append([(np.concatenate([clean, rng.choice(poisons, min(n_poison, len(poisons)), replace=False)]),
                           batch_size, None)])
        else:  # every poison alone among clean samples: its batch is clean apart from itself
            chosen = rng.choice(poisons, min(len(poisons), max(1, len(poisons) // draws)), replace=False)
            plan = []
            for p in chosen:
                rows = np.concatenate([[p], rng.choice(clean, min(batch_size - 1, len(clean)), replace=False)])
                plan.append((rows, len(rows), 1))
            plans.append(plan + [(clean, batch_size, None)])
    jobs = [(x, t, truth, plan, method, k, seed + draw, batched_kw) for draw, plan in enumerate(plans)]
    if workers > 1 and draws > 1:
        from joblib import Parallel, delayed

        return np.asarray(Parallel(n_jobs=min(workers, draws))(delayed(_draw_auroc)(*job) for job in jobs))
    return np.asarray([_draw_auroc(*job) for job in jobs])


def _draw_auroc(x, t, truth, plan, method, k, seed, batched_kw) -> float:
    """One draw of :func:`auroc_at_proportion`: score each planned set in its batches, keep the planned scores."""
    scores, labels = [], []
    for rows, size, keep in plan:
        s = batched(x[rows], method, k, None if t is None else t[rows], size, seed, **batched_kw)[:keep]
        scores.append(s)
        labels.append(truth[rows][:keep])
    return auroc(np.concatenate(scores), np.concatenate(labels))


def neighbourhood(embeddings, is_poisoned, k: int = 16) -> dict[str, float]:
    """How poisons sit among their neighbours (images only, each point's k nearest others): the share of a
    poison's neighbours that are poisons (purity; high when the poisons are each other's neighbours, and a
    density ratio then sees them as typical), and the ratio of the poisons' median k-distance to the clean
    samples' (above 1: the poisons' neighbourhoods are sparser)."""
    x, truth = _as_matrix(embeddings), np.asarray(is_poisoned, dtype=bool)
    dist, idx = knn(x, k)
    purity = float(truth[idx[truth]].mean()) if truth.any() else float("nan")
    ratio = float(np.median(dist[truth, -1]) / max(np.median(dist[~truth, -1]), _TINY)) if truth.any() else \
        float("nan")
    return {"neighbour_purity": purity, "kdist_ratio": ratio}


def _iforest(x: np.ndarray, ref, seed: int) -> np.ndarray:
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=100, random_state=seed)
    forest.fit(x if ref is None else _as_matrix(ref, "reference embeddings"))
    return -forest.score_samples(x)  # sklearn: lower = more anomalous


def _spectral(x: np.ndarray, labels) -> np.ndarray:
    out = np.empty(len(x))
    groups = [np.arange(len(x))] if labels is None else \
        [np.flatnonzero(np.asarray(labels) == c) for c in np.unique(labels)]
    for g in groups:
        centred = x[g].astype(np.float64) - x[g].mean(0)
        if len(g) < 2:
            out[g] = 0.0
            continue
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        out[g] = (centred @ vt[0]) ** 2
    return out


# ---------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------

def _check_binary(scores, is_poisoned):
    scores, truth = np.asarray(scores, dtype=np.float64), np.asarray(is_poisoned).astype(bool)
    if scores.shape != truth.shape:
        raise ValueError(f"{len(scores)} scores but {len(truth)} ground-truth labels")
    if truth.all() or not truth.any():
        raise ValueError("AUROC/AUPRC need both poisoned and clean samples; the ground truth has only one class")
    return scores, truth


def auroc(scores, is_poisoned) -> float:
    """Area under the ROC curve, poisoned = positive (ties count half)."""
    from sklearn.metrics import roc_auc_score

    scores, truth = _check_binary(scores, is_poisoned)
    return float(roc_auc_score(truth, scores))


def auprc(scores, is_poisoned) -> float:
    """Area under the precision–recall curve (average precision), poisoned = positive."""
    from sklearn.metrics import average_precision_score

    scores, truth = _check_binary(scores, is_poisoned)
    return float(average_precision_score(truth, scores))


def fpr_at_tpr(scores, is_poisoned, tpr: float = 0.95) -> float:
    """False positive rate at the threshold that first reaches the given true positive rate."""
    from sklearn.metrics import roc_curve

    scores, truth = _check_binary(scores, is_poisoned)
    fpr, tprs, _ = roc_curve(truth, scores)
    return float(fpr[np.searchsorted(tprs, tpr, side="left")])
