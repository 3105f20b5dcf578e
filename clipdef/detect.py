"""Density-ratio detection of poisoned samples in CLIP embedding space (Huang et al., ICLR 2025).

Backdoor samples sit in sparse neighbourhoods of the embedding space of a CLIP trained on them: their k-NN distances
are large *compared with those of their neighbours*. ``score(embeddings, method, k)`` returns one score per sample,
higher meaning more likely poisoned.

One convention for every method (the reference code mixes two, see algorithms.md §8): r_i(q) is the distance from
q to its i-th nearest *other* point of the reference set — q itself is never its own neighbour — and
d_k(q) = r_k(q). Distances are Euclidean, as in the paper's code (embeddings are not normalised unless you do it).

* ``kdist``  d_k(q)
* ``lid``    LID(q) = −( (1/k) Σ_{i≤k} ln(r_i(q)/r_k(q)) )⁻¹                      (MLE, Levina–Bickel)
* ``slof``   (1/k) Σ_{o∈N_k(q)} d_k(q)/d_k(o)                                     (simplified LOF)
* ``dao``    (1/k) Σ_{o∈N_k(q)} (d_k(q)/d_k(o))^{LID(o)}                          (Anderberg et al., SDM 2024);
             ``form="log"``: (1/k) Σ LID(o)·ln(d_k(q)/d_k(o)), what the paper's code computes
* ``iforest``  −IsolationForest.score_samples (100 trees)
* ``spectral`` spectral signatures (Tran et al., 2018): squared projection of the centred embedding on the top
               right-singular vector, per class when labels are given

Nearest neighbours come from faiss: an exact flat index searched in query batches (memory stays bounded), or an
IVF index for large N (``method="auto"`` switches at ``APPROX_THRESHOLD`` points).
"""

from __future__ import annotations

import math

import numpy as np

METHODS = ("kdist", "lid", "slof", "dao", "iforest", "spectral")
APPROX_THRESHOLD = 200_000   # above this many reference points, "auto" uses the IVF index
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

def _index(ref: np.ndarray, approx: bool, nprobe: int, seed: int):
    import faiss

    d = ref.shape[1]
    if not approx:
        index = faiss.IndexFlatL2(d)
    else:
        nlist = max(1, int(4 * math.sqrt(len(ref))))
        quantizer = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist)
        rng = np.random.default_rng(seed)
        train = ref[rng.choice(len(ref), min(len(ref), 64 * nlist), replace=False)]
        index.train(train)
        index.nprobe = nprobe
    index.add(ref)
    return index


def knn(x, k: int, ref=None, method: str = "auto", batch_size: int = 16384, nprobe: int = 32, seed: int = 0,
        progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Distances (N, k) and indices (N, k) of the k nearest neighbours of each row of ``x`` in ``ref``.

    With ``ref=None`` the reference is ``x`` itself and each point is excluded from its own neighbours — by index,
    so exact duplicates of a point still count as its neighbours (at distance 0). Distances are Euclidean."""
    from clipdef.env import progress_bar

    x = _as_matrix(x)
    self_query = ref is None
    ref_m = x if self_query else _as_matrix(ref, "reference embeddings")
    if ref_m.shape[1] != x.shape[1]:
        raise ValueError(f"queries have dimension {x.shape[1]} but the reference has {ref_m.shape[1]}")
    _check_k(k, len(ref_m) - (1 if self_query else 0))
    if method not in ("auto", "exact", "approx"):
        raise ValueError(f"method must be 'auto', 'exact' or 'approx', got {method!r}")
    approx = method == "approx" or (method == "auto" and len(ref_m) > APPROX_THRESHOLD)
    index = _index(ref_m, approx, nprobe, seed)
    want = k + 1 if self_query else k
    dist = np.empty((len(x), k), dtype=np.float32)
    idx = np.empty((len(x), k), dtype=np.int64)
    starts = range(0, len(x), batch_size)
    for start in progress_bar(starts, enabled=progress, desc="k-NN search", total=len(starts)):
        stop = min(start + batch_size, len(x))
        d2, ix = index.search(x[start:stop], want)
        if self_query:
            d2, ix = _drop_self(d2, ix, np.arange(start, stop))
        dist[start:stop] = np.sqrt(np.maximum(d2, 0))
        idx[start:stop] = ix
    return dist, idx


def _drop_self(d2: np.ndarray, ix: np.ndarray, own: np.ndarray):
    """Remove each query's own index from its k+1 results; when it is absent (many duplicates, or an
    approximate search that missed it), drop the farthest result instead."""
    is_self = ix == own[:, None]
    has_self = is_self.any(1)
    drop = np.where(has_self, is_self.argmax(1), ix.shape[1] - 1)
    keep = np.ones_like(ix, dtype=bool)
    keep[np.arange(len(ix)), drop] = False
    k = ix.shape[1] - 1
    return d2[keep].reshape(-1, k), ix[keep].reshape(-1, k)


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
    """d_k and LID of the queries and of every reference point, from at most two searches."""
    dist, idx = knn(x, k, ref=ref, **knn_kw)
    if ref is None:
        ref_dist = dist
    else:
        ref_dist, _ = knn(ref, k, **knn_kw)
    return dist, idx, ref_dist


def _finite(scores: np.ndarray) -> np.ndarray:
    """Map NaN/+inf to a large finite value and −inf to a small one (the reference maps them to 1000 / 0)."""
    return np.nan_to_num(scores, nan=_CAP, posinf=_CAP, neginf=-_CAP)


def score(embeddings, method: str, k: int = 16, ref=None, texts=None, labels=None, form: str = "power",
          knn_method: str = "auto", seed: int = 0, progress: bool = False, **knn_kw) -> np.ndarray:
    """Poison scores, higher = more likely poisoned, one per row of ``embeddings`` (N, d).

    ``ref``: a separate (clean) reference set; by default the embeddings themselves, each point excluded from its
    own neighbourhood. ``texts``: the paper's image+text mode — the reference becomes images ∪ captions
    (row i of ``texts`` is the caption of image i; a query keeps its own caption as a possible neighbour).
    ``labels``: per-class scoring for ``spectral``. ``form``: DAO's "power" (the paper) or "log" (the code)."""
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
        ref = np.concatenate([x, t])
        # queries are the images; the reference holds the images too, so exclude self by index
        dist, idx = _joint_knn(x, ref, k, knn_kw)
        ref_dist, _ = knn(ref, k, **knn_kw)
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


def _joint_knn(images: np.ndarray, ref: np.ndarray, k: int, knn_kw) -> tuple[np.ndarray, np.ndarray]:
    """k-NN of each image in images ∪ texts, excluding the image's own row (index i) but not its caption."""
    n = len(images)
    _check_k(k, len(ref) - 1)
    index = _index(ref, knn_kw.get("method") == "approx" or (knn_kw.get("method") == "auto"
                                                              and len(ref) > APPROX_THRESHOLD),
                   knn_kw.get("nprobe", 32), knn_kw.get("seed", 0))
    d2, ix = index.search(images, k + 1)
    d2, ix = _drop_self(d2, ix, np.arange(n))
    return np.sqrt(np.maximum(d2, 0)), ix


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
