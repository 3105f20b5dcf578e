"""Aggregating results rows into the reproduction report: mean ± 95 % CI over seeds, beside the papers' numbers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

GROUP = ["profile", "notebook", "attack", "defense", "metric"]


def t_quantile_975(dof: int) -> float:
    """The 97.5 % quantile of Student's t with ``dof`` degrees of freedom (scipy when present)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, dof))
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn
        return 1.96


def summarise(frame: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Mean, standard deviation, n and the half-width of the 95 % t-interval of ``value`` per group.

    With a single seed the interval is undefined (NaN), not zero: one run says nothing about its spread."""
    if by is None:  # the standard columns plus any extra ones the chapters added (poison_rate, k, …)
        by = GROUP + [c for c in frame.columns if c not in GROUP + ["seed", "value"]]
    by = [c for c in by if c in frame.columns]
    if frame.empty:
        return pd.DataFrame(columns=by + ["mean", "std", "n", "ci95"])
    g = frame.groupby(by, dropna=False)["value"]
    out = g.agg(mean="mean", std="std", n="count").reset_index()
    out["ci95"] = [t_quantile_975(n - 1) * s / math.sqrt(n) if n > 1 else np.nan
                   for n, s in zip(out["n"], out["std"])]
    return out


def format_mean_ci(mean: float, ci: float, scale: float = 100.0, digits: int = 1) -> str:
    """'52.6 ± 1.3' (percentages by default); a single run prints without the interval."""
    if ci != ci:  # NaN
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * ci:.{digits}f}"


def load_paper_numbers() -> pd.DataFrame:
    """What the papers report (cited facts), one row per (paper, table, method, attack, metric)."""
    import yaml

    spec = yaml.safe_load((Path(__file__).parent / "paper_numbers.yaml").read_text())
    rows = []
    for table in spec["tables"]:
        for method, cells in table["values"].items():
            for attack, pair in cells.items():
                for metric, value in zip(table["metrics"], pair):
                    rows.append({"paper": table["paper"], "table": table["name"], "setting": table["setting"],
                                 "defense": method, "attack": attack, "metric": metric, "paper_value": value / 100})
    return pd.DataFrame(rows)


def _ours(frame: pd.DataFrame, profile: str, **where) -> tuple[float, float, int]:
    """Mean over seeds (each seed's value first averaged over the matching rows), its 95 % CI and n."""
    sel = frame[frame["profile"] == profile]
    for col, val in where.items():
        sel = sel[sel[col].isin(val if isinstance(val, (list, tuple, set)) else [val])]
    if sel.empty:
        return float("nan"), float("nan"), 0
    per_seed = sel.groupby("seed")["value"].mean()
    n = len(per_seed)
    ci = t_quantile_975(n - 1) * per_seed.std() / math.sqrt(n) if n > 1 else float("nan")
    return float(per_seed.mean()), float(ci), n


def claims(frame: pd.DataFrame, profiles=("tiny", "paper")) -> pd.DataFrame:
    """Every seed claim as a row: the paper's statement and number, ours per profile (mean ± 95 % CI over seeds),
    and whether the qualitative claim holds on each profile."""
    paper = load_paper_numbers()

    def paper_value(defense, attack, metric):
        r = paper[(paper.defense == defense) & (paper.attack == attack) & (paper.metric == metric)]
        return float(r.paper_value.iloc[0]) if len(r) else float("nan")

    specs = [
        ("Detection (Huang et al.)", "DAO detects poisoned CLIP pairs (mean AUROC over attacks)",
         "AUROC = 1.0 (QuickStart, BadNets RN50)", dict(notebook="03_detection", metric="auroc",
                                                         defense="detect:dao:image+text"), lambda v: v >= 0.95),
        ("Detection (Huang et al.)", "SLOF detects poisoned CLIP pairs (mean AUROC over attacks)",
         "near-perfect (abstract)", dict(notebook="03_detection", metric="auroc", defense="detect:slof:image+text"),
         lambda v: v >= 0.95),
    ]
    for attack in ("badnet", "blended", "sig", "badclip"):
        specs.append(("CleanerCLIP Table 1", f"NoDefense top-1 ASR, {attack}",
                      f"{100 * paper_value('none', attack, 'asr_top1'):.2f} %",
                      dict(notebook="04_cleanclip_vs_cleanerclip", metric="asr_top1", defense="none", attack=attack),
                      lambda v: v >= 0.5))
        specs.append(("CleanerCLIP Table 1", f"CleanerCLIP top-1 ASR, {attack} (claim: ≤ CleanCLIP's)",
                      f"{100 * paper_value('cleanerclip', attack, 'asr_top1'):.2f} % vs CleanCLIP "
                      f"{100 * paper_value('cleanclip', attack, 'asr_top1'):.2f} %",
                      dict(notebook="04_cleanclip_vs_cleanerclip", metric="asr_top1", defense="cleanerclip",
                           attack=attack), ("compare", dict(defense="cleanclip"))))
    specs.append(("CGD (Xu et al.)", "ASR after CGD (mean over attacks; claim: < 1 %)", "< 1 % on 4 datasets × 11 "
                  "attacks", dict(notebook="05_cgd", metric="asr", defense="cgd"), lambda v: v < 0.01))
    out = []
    for source, claim, paper_text, where, test in specs:
        row = {"source": source, "claim": claim, "paper reports": paper_text}
        for prof in profiles:
            mean, ci, n = _ours(frame, prof, **where)
            row[f"ours ({prof})"] = "no run" if n == 0 else f"{format_mean_ci(mean, ci)} (n={n})"
            if n == 0:
                row[f"holds ({prof})"] = "–"
            elif isinstance(test, tuple):
                other, _, _ = _ours(frame, prof, **{**where, **test[1]})
                row[f"holds ({prof})"] = "yes" if mean <= other else "no"
            else:
                row[f"holds ({prof})"] = "yes" if test(mean) else "no"
        out.append(row)
    return pd.DataFrame(out)
