"""Detection speed and memory vs N: clipdef's exact and approximate paths against faiss search alone, scikit-learn's
LOF and a plain PyTorch blockwise implementation, on the same synthetic embeddings in the same run.

    python benchmarks/bench_detect.py --sizes 10000 100000 --dims 512 1024 --methods slof dao
    python benchmarks/bench_detect.py --sizes 1000000 --dims 1024 --impls clipdef-approx --methods slof dao

The embeddings of each (N, d) are generated once, by a subprocess of their own, and saved; each (N, d, method,
implementation) then runs in a fresh subprocess that loads them, so its time is the scoring alone and its peak
memory (VmHWM, which includes the embeddings themselves: N × d × 4 bytes) is its own. scikit-learn's LOF is one
score, run once per (N, d). A baseline that went over the time budget at a smaller N is
skipped at larger N and recorded as such. For the approximate path a second subprocess, outside the timing, checks
it against exact search on the same N points (see :func:`subsample_check`). Results are appended to
benchmarks/results/detect.csv (one row per run, with the machine and the date).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "detect.csv"
IMPLS = ("faiss-flat-search", "clipdef-exact", "clipdef-approx", "torch-blockwise", "sklearn-lof")
FIELDS = ["n", "d", "method", "impl", "seconds", "peak_mem_mb", "auroc", "check_queries", "check_recall",
          "check_auroc_exact", "check_auroc_approx", "note", "machine", "date"]


def make_embeddings(n: int, d: int, poison_fraction: float = 0.001, clusters: int = 200, intrinsic: int = 16,
                    offset: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic embeddings with the structure the detectors rely on, float32 (N, d), and the poison mask.

    Clean points lie on ``clusters`` random ``intrinsic``-dimensional Gaussian patches whose scales differ by up to
    4× (neighbourhoods of very different densities, as in real embedding spaces; the k-distance alone confuses a
    sparse clean patch with an outlier), plus small isotropic noise. Poisons are clean-like points pushed off
    their patch by ``offset`` times the patch's spread in a random direction: sparse *relative to their
    neighbours*, which is what the density ratios measure, but not trivially separable."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    scales = np.exp(rng.uniform(np.log(0.5), np.log(2.0), clusters)).astype(np.float32)
    bases = (rng.normal(size=(clusters, intrinsic, d)) / np.sqrt(d)).astype(np.float32)
    label = rng.integers(0, clusters, n)
    x = np.empty((n, d), np.float32)
    for c in range(clusters):
        rows = np.flatnonzero(label == c)
        x[rows] = centres[c] + (rng.normal(size=(len(rows), intrinsic)).astype(np.float32) * scales[c]) @ bases[c]
    for s in range(0, n, 65_536):
        x[s:s + 65_536] += 0.02 * rng.standard_normal((min(n, s + 65_536) - s, d), dtype=np.float32)
    n_poison = max(1, int(poison_fraction * n))
    poisons = rng.choice(n, n_poison, replace=False)
    u = rng.normal(size=(n_poison, d)).astype(np.float32)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    x[poisons] += u * (offset * scales[label[poisons]] * np.sqrt(intrinsic))[:, None]
    truth = np.zeros(n, dtype=bool)
    truth[poisons] = True
    return x, truth


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def scores_from_neighbours(dist: np.ndarray, idx: np.ndarray, method: str, ref_dist: np.ndarray | None = None):
    """SLOF / DAO (power form) from sorted neighbour distances; ``ref_dist`` holds the neighbours' own distances
    (indexed by ``idx``), by default those of the queries themselves (a self-search)."""
    from clipdef.detect import lid_mle

    ref_dist = dist if ref_dist is None else ref_dist
    ratio = np.maximum(dist[:, -1:].astype(np.float64), 1e-12) / np.maximum(ref_dist[:, -1].astype(np.float64),
                                                                             1e-12)[idx]
    if method == "slof":
        return ratio.mean(1)
    return np.exp(np.minimum(lid_mle(ref_dist)[idx] * np.log(ratio), 700)).mean(1)


def torch_blockwise(x: np.ndarray, k: int, method: str, block: int = 4096) -> np.ndarray:
    """The straightforward implementation: blockwise cdist + topk, then the same score formulas."""
    import torch

    t = torch.from_numpy(x)
    dist = np.empty((len(x), k), np.float32)
    idx = np.empty((len(x), k), np.int64)
    for s in range(0, len(x), block):
        d = torch.cdist(t[s:s + block], t)
        d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = float("inf")
        vals, ids = d.topk(k, largest=False)
        dist[s:s + block], idx[s:s + block] = vals.numpy(), ids.numpy()
    return scores_from_neighbours(dist, idx, method)


def make_data(n: int, d: int, seed: int, path: str) -> dict:
    """Runs inside a child process: the synthetic embeddings and their poison mask, saved once for every run."""
    x, truth = make_embeddings(n, d, seed=seed)
    np.save(path + ".x.npy", x)
    np.save(path + ".truth.npy", truth)
    return {"n_poison": int(truth.sum())}


def load_data(path: str) -> tuple[np.ndarray, np.ndarray]:
    return np.load(path + ".x.npy"), np.load(path + ".truth.npy")


def run_one(method: str, impl: str, k: int, data: str, save_scores: str | None = None) -> dict:
    """Runs inside the child process: load the data, time one implementation, report seconds/memory/AUROC."""
    from clipdef import detect

    x, truth = load_data(data)
    n, d = x.shape
    t0 = time.perf_counter()
    if impl == "faiss-flat-search":  # the exact k-NN search alone, straight through faiss: the speed of light
        import faiss

        index = faiss.IndexFlatL2(d)
        index.add(x)
        index.search(x, k + 1)
        scores = None
    elif impl == "clipdef-exact":
        scores = detect.score(x, method, k=k, knn_method="exact")
    elif impl == "clipdef-approx":
        scores = detect.score(x, method, k=k, knn_method="approx")
    elif impl == "torch-blockwise":
        scores = torch_blockwise(x, k, method)
    elif impl == "sklearn-lof":
        from sklearn.neighbors import LocalOutlierFactor

        lof = LocalOutlierFactor(n_neighbors=k, n_jobs=-1).fit(x)
        scores = -lof.negative_outlier_factor_
    else:
        raise ValueError(f"unknown implementation {impl!r}; valid: {IMPLS}")
    seconds = time.perf_counter() - t0
    if save_scores and scores is not None:
        np.save(save_scores, scores)
    auroc = detect.auroc(scores, truth) if scores is not None else float("nan")
    return {"seconds": seconds, "peak_mem_mb": peak_mb(), "auroc": auroc}


def subsample_check(method: str, k: int, seed: int, data: str, scores_path: str, queries: int = 1000) -> dict:
    """Runs inside a child process: the approximate scores of all N points against *exact* ones for a subsample.

    ``queries`` points (half of them poisons, or all poisons if fewer) are scored exactly against the full N
    points — their exact neighbours by flat search, and each neighbour's own exact neighbourhood — and the AUROC
    of the approximate scores of the same points is compared with it (a paired comparison: same points, same
    truth). Also the recall of the approximate k-NN of these points."""
    import faiss

    from clipdef import detect

    x, truth = load_data(data)
    n, d = x.shape
    approx_scores = np.load(scores_path)
    rng = np.random.default_rng(seed + 1)
    poisons = np.flatnonzero(truth)
    chosen = np.concatenate([rng.choice(poisons, min(len(poisons), queries // 2), replace=False),
                             rng.choice(np.flatnonzero(~truth), queries // 2, replace=False)])
    index = faiss.IndexFlatL2(d)
    index.add(x)

    def exact_neighbours(rows):
        d2, ix = index.search(x[rows], k + 1)
        d2, ix = detect._drop(d2, ix, [np.asarray(rows)], k)
        return np.sqrt(np.maximum(d2, 0)), ix

    q_dist, q_idx = exact_neighbours(chosen)
    others = np.unique(q_idx)
    o_dist, _ = exact_neighbours(others)
    ref_dist = np.zeros((n, k), np.float32)  # only the rows of the neighbours are needed (and filled)
    ref_dist[others] = o_dist
    exact = scores_from_neighbours(q_dist, q_idx, method, ref_dist)
    _, a_idx = detect.knn(x[chosen], k + 1, ref=x, method="approx")
    recall = float(np.mean([len(set(a[a != c][:k]) & set(b)) / k for a, b, c in zip(a_idx, q_idx, chosen)]))
    return {"check_queries": len(chosen), "check_recall": recall,
            "check_auroc_exact": detect.auroc(exact, truth[chosen]),
            "check_auroc_approx": detect.auroc(approx_scores[chosen], truth[chosen])}


def child(function: str, spec: dict, timeout: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps({"function": function, **spec})],
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1][:200] if out.stderr.strip() else "failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} cores"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--dims", type=int, nargs="+", default=[512])
    p.add_argument("--methods", nargs="+", default=["slof", "dao"])
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--budget", type=float, default=300.0, help="seconds; slower baselines are skipped at larger N")
    p.add_argument("--check-queries", type=int, default=1000, help="points checked against exact search "
                                                                   "(approximate path); 0 turns the check off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        function = {"make": make_data, "run": run_one, "check": subsample_check}[spec.pop("function")]
        print(json.dumps(function(**spec)))
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    new_file = not args.out.exists()
    too_slow: set[tuple[str, str, int]] = set()
    rows = []
    today = datetime.date.today().isoformat()
    with open(args.out, "a", newline="") as fh, tempfile.TemporaryDirectory() as scratch:
        writer = csv.DictWriter(fh, FIELDS)
        if new_file:
            writer.writeheader()
        for d in args.dims:
            for n in sorted(args.sizes):
                data = str(Path(scratch) / f"data-{n}-{d}")
                child("make", {"n": n, "d": d, "seed": args.seed, "path": data}, 3600)
                for method in args.methods:
                    for impl in args.impls:
                        if impl == "faiss-flat-search" and method != args.methods[0]:
                            continue  # the search alone does not depend on the score
                        if impl == "sklearn-lof" and method != args.methods[0]:
                            continue  # LOF is one score, whichever density ratio the others compute
                        label = {"faiss-flat-search": "knn", "sklearn-lof": "lof"}.get(impl, method)
                        row = {f: "" for f in FIELDS} | {"n": n, "d": d, "impl": impl, "machine": machine(),
                                                         "date": today, "method": label}
                        scores_path = str(Path(scratch) / "scores.npy")
                        if (impl, label, d) in too_slow:
                            row["note"] = f"skipped: over the {args.budget:.0f} s budget at a smaller N"
                        else:
                            try:
                                row.update(child("run", {"method": method, "impl": impl, "k": args.k,
                                                         "data": data, "save_scores": scores_path},
                                                 args.budget * 3))
                                if row["seconds"] > args.budget:
                                    too_slow.add((impl, label, d))
                                if impl == "clipdef-approx" and args.check_queries:
                                    row.update(child("check", {"method": method, "k": args.k, "seed": args.seed,
                                                               "data": data, "scores_path": scores_path,
                                                               "queries": args.check_queries}, 3600))
                            except subprocess.TimeoutExpired:
                                row["note"] = f"stopped after {args.budget * 3:.0f} s"
                                too_slow.add((impl, label, d))
                            except RuntimeError as err:
                                row["note"] = f"failed: {err}"
                        writer.writerow(row)
                        fh.flush()
                        rows.append(row)
                        took = f"{row['seconds']:.1f} s" if row["seconds"] != "" else "-"
                        print(f"n={n:>8} d={d:>5} {row['method']:>5} {impl:>18}: {took} auroc={row['auroc']} "
                              f"{row['note']}", flush=True)
                for suffix in (".x.npy", ".truth.npy"):
                    Path(data + suffix).unlink(missing_ok=True)
    import pandas as pd

    print(pd.DataFrame(rows).drop(columns=["machine", "date"]).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
