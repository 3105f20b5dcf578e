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
    by = [c for c in (by or GROUP) if c in frame.columns]
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
