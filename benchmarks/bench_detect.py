"""Detection speed and memory vs N: clipdef's exact and approximate paths against faiss search alone, scikit-learn's
LOF and a plain PyTorch blockwise implementation, on the same synthetic embeddings in the same run.

    python benchmarks/bench_detect.py --sizes 10000 100000 --dims 512 --methods slof dao
    python benchmarks/bench_detect.py --sizes 1000000 --dims 1024 --impls clipdef-approx

Each (N, d, method, implementation) runs in a fresh subprocess so its peak memory (VmHWM) is its own. A baseline
that exceeded the time budget at a smaller N is skipped at larger N and recorded as such. Results are appended to
benchmarks/results/detect.csv (n, d, method, impl, seconds, peak_mem_mb, auroc, note).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "detect.csv"
IMPLS = ("faiss-flat-search", "clipdef-exact", "clipdef-approx", "torch-blockwise", "sklearn-lof")
FIELDS = ["n", "d", "method", "impl", "seconds", "peak_mem_mb", "auroc", "note"]


def make_embeddings(n: int, d: int, poison_fraction: float = 0.001, clusters: int = 200, seed: int = 0):
    """Clustered 'clean' embeddings and sparse planted 'poisons' far from every cluster, float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32) * 2.0
    x = centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, d)).astype(np.float32) * 0.5
    n_poison = max(1, int(poison_fraction * n))
    poisons = rng.choice(n, n_poison, replace=False)
    x[poisons] = rng.normal(size=(n_poison, d)).astype(np.float32) * 2.5
    truth = np.zeros(n, dtype=bool)
    truth[poisons] = True
    return np.ascontiguousarray(x, dtype=np.float32), truth


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def torch_blockwise(x: np.ndarray, k: int, method: str, block: int = 4096) -> np.ndarray:
    """The straightforward implementation: blockwise cdist + topk, then the same score formulas."""
    import torch

    from clipdef.detect import lid_mle

    t = torch.from_numpy(x)
    dist = np.empty((len(x), k), np.float32)
    idx = np.empty((len(x), k), np.int64)
    for s in range(0, len(x), block):
        d = torch.cdist(t[s:s + block], t)
        d[torch.arange(d.shape[0]), torch.arange(s, s + d.shape[0])] = float("inf")
        vals, ids = d.topk(k, largest=False)
        dist[s:s + block], idx[s:s + block] = vals.numpy(), ids.numpy()
    dk = np.maximum(dist[:, -1].astype(np.float64), 1e-12)
    ratio = dk[:, None] / dk[idx]
    if method == "slof":
        return ratio.mean(1)
    lid = lid_mle(dist)[idx]
    return np.exp(np.minimum(lid * np.log(ratio), 700)).mean(1)


def run_one(n: int, d: int, method: str, impl: str, k: int, seed: int) -> dict:
    """Runs inside the child process."""
    from clipdef import detect

    x, truth = make_embeddings(n, d, seed=seed)
    t0 = time.perf_counter()
    if impl == "faiss-flat-search":
        detect.knn(x, k, method="exact")
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
    auroc = detect.auroc(scores, truth) if scores is not None else float("nan")
    return {"seconds": seconds, "peak_mem_mb": peak_mb(), "auroc": auroc}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--dims", type=int, nargs="+", default=[512])
    p.add_argument("--methods", nargs="+", default=["slof", "dao"])
    p.add_argument("--impls", nargs="+", default=list(IMPLS))
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--budget", type=float, default=300.0, help="seconds; slower baselines are skipped at larger N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(**json.loads(args.child))))
        return 0
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    new_file = not RESULTS.exists()
    too_slow: set[tuple[str, str, int]] = set()
    rows = []
    with open(RESULTS, "a", newline="") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        if new_file:
            writer.writeheader()
        for d in args.dims:
            for n in sorted(args.sizes):
                for method in args.methods:
                    for impl in args.impls:
                        if impl == "faiss-flat-search" and method != args.methods[0]:
                            continue  # the search alone does not depend on the score
                        row = {"n": n, "d": d, "method": method if impl != "faiss-flat-search" else "knn",
                               "impl": impl, "seconds": "", "peak_mem_mb": "", "auroc": "", "note": ""}
                        if (impl, method, d) in too_slow:
                            row["note"] = f"skipped: over the {args.budget:.0f} s budget at a smaller N"
                        else:
                            spec = json.dumps({"n": n, "d": d, "method": method, "impl": impl, "k": args.k,
                                               "seed": args.seed})
                            try:
                                out = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True,
                                                     text=True, timeout=args.budget * 3)
                                if out.returncode:
                                    row["note"] = "failed: " + out.stderr.strip().splitlines()[-1][:200]
                                else:
                                    row.update(json.loads(out.stdout.strip().splitlines()[-1]))
                                    if row["seconds"] > args.budget:
                                        too_slow.add((impl, method, d))
                            except subprocess.TimeoutExpired:
                                row["note"] = f"stopped after {args.budget * 3:.0f} s"
                                too_slow.add((impl, method, d))
                        writer.writerow(row)
                        fh.flush()
                        rows.append(row)
                        took = f"{row['seconds']:.1f} s" if row["seconds"] != "" else "-"
                        print(f"n={n:>8} d={d:>5} {row['method']:>5} {impl:>18}: {took} {row['note']}",
                              flush=True)
    try:
        import pandas as pd

        print(pd.DataFrame(rows).to_markdown(index=False))
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
