"""Results as rows: (profile, notebook, attack, defense, seed, metric, value) — one home for every number.

Each run writes its rows to its own JSON-lines file (``<notebook>__<profile>__seed<k>.jsonl`` under
:func:`results_dir`); a rerun replaces that file, so rows are never duplicated. :func:`load` reads a file or a
folder of them into a DataFrame. Writes are atomic, so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

COLUMNS = ("profile", "notebook", "attack", "defense", "seed", "metric", "value")


@dataclass(frozen=True)
class Row:
    profile: str
    notebook: str
    attack: str
    defense: str
    seed: int
    metric: str
    value: float


def rows(profile: str, notebook: str, metrics: dict, attack: str = "none", defense: str = "none",
         seed: int = 0, **extra) -> list[dict]:
    """Turn a metrics dict into rows; ``extra`` columns (e.g. poison_rate, k, method) are kept on every row."""
    out = []
    for metric, value in metrics.items():
        value = float(value)
        if value != value:  # NaN: a metric that could not be computed is an error, not a silent blank
            raise ValueError(f"metric {metric!r} is NaN for {notebook}/{attack}/{defense}")
        out.append({**asdict(Row(profile, notebook, attack, defense, int(seed), metric, value)), **extra})
    return out


class Recorder:
    """A chapter's results rows: bound to its profile, chapter and seed, so a chapter writes only what it measured.

        rec = results.Recorder(cfg, labels.ATTACKS)
        rec.add(metrics, attack="sig", poison_rate=0.03)
        rec.save()
    """

    def __init__(self, cfg, chapter: str):
        self.profile, self.chapter, self.seed = cfg.name, chapter, cfg.seed
        self.rows: list[dict] = []

    def add(self, metrics: dict, attack: str = "none", defense: str = "none", **extra) -> list[dict]:
        """Rows for ``metrics`` (name → value) of one (attack, defense); ``extra`` columns such as poison_rate or k
        tell measurements of the same attack and defense apart."""
        new = rows(self.profile, self.chapter, metrics, attack=attack, defense=defense, seed=self.seed, **extra)
        self.rows += new
        return new

    def save(self, folder: str | os.PathLike | None = None) -> Path:
        """Write the chapter's rows (:func:`save_run`) and return the file."""
        return save_run(self.rows, folder=folder)


def results_dir() -> Path:
    """``$CLIPDEF_RESULTS``, or ``results/`` in the artifact cache."""
    from clipdef.env import cache_dir

    return Path(os.environ.get("CLIPDEF_RESULTS", cache_dir() / "results"))


def save_run(new_rows: list[dict], name: str | None = None, folder: str | os.PathLike | None = None) -> Path:
    """Write one run's rows to ``<folder>/<notebook>__<profile>__seed<k>.jsonl`` atomically (replacing a previous
    run with the same key). ``name`` overrides the file stem (e.g. to add a parameter hash)."""
    from clipdef.env import atomic_path

    if not new_rows:
        raise ValueError("no rows to save")
    _refuse_duplicates(new_rows)
    first = new_rows[0]
    stem = name or f"{first['notebook']}__{first['profile']}__seed{first['seed']}"
    if name is None and os.environ.get("CLIPDEF_RUN_ID"):  # set by `clipdef grid`: one file per grid cell
        stem += f"__{os.environ['CLIPDEF_RUN_ID']}"
    path = Path(folder or results_dir()) / f"{stem}.jsonl"
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in new_rows))
    return path


def _refuse_duplicates(new_rows: list[dict]) -> None:
    """One row per measurement: a run that writes the same (attack, defense, metric, extra columns) twice would
    count as two seeds in every mean and interval."""
    seen = set()
    for r in new_rows:
        key = tuple(sorted((k, str(v)) for k, v in r.items() if k != "value"))
        if key in seen:
            raise ValueError(f"the same measurement is written twice: {dict(key)}; write each once")
        seen.add(key)


def batch_dir(profile: str) -> Path:
    """Where the published batch of ``profile`` lies: ``$CLIPDEF_BATCH``, else ``results/<profile>/`` of the book's
    repository (``grids/book.yaml`` makes it; the report chapter reads it)."""
    if os.environ.get("CLIPDEF_BATCH"):
        return Path(os.environ["CLIPDEF_BATCH"])
    return Path(__file__).resolve().parent.parent / "results" / profile


def published(profile: str, chapter: str):
    """The published batch's rows of one chapter on one profile, every seed: what a chapter shows for the sections
    it does not run itself (its ``ablations`` parameter off). Empty where no batch is published (an installed
    package without the repository, a profile no batch ran)."""
    import pandas as pd

    folder = batch_dir(profile)
    rows = load(folder) if folder.is_dir() else pd.DataFrame(columns=list(COLUMNS))
    if len(rows):
        rows = rows[(rows["profile"] == profile) & (rows["notebook"] == chapter)]
    return rows.reset_index(drop=True)


def by_metric(rows, index: list[str]):
    """One line per ``index`` group and one column per metric, each the mean over the seeds (each seed's rows
    averaged first), with ``seeds``, how many seeds measured it. Groups missing an index column read NaN."""
    import pandas as pd

    if not len(rows):
        no_groups = pd.MultiIndex.from_arrays([[]] * len(index), names=index)
        return pd.DataFrame(columns=["seeds"], index=no_groups if len(index) > 1 else no_groups.get_level_values(0))
    rows = rows.assign(**{c: rows[c] if c in rows.columns else float("nan") for c in index})
    per_seed = rows.groupby(index + ["metric", "seed"], dropna=False)["value"].mean().reset_index()
    wide = per_seed.pivot_table(index=index, columns="metric", values="value", aggfunc="mean", dropna=False)
    seeds = per_seed.groupby(index, dropna=False)["seed"].nunique().rename("seeds")
    return wide.join(seeds).dropna(how="all", subset=list(wide.columns))


def load(path: str | os.PathLike):
    """All rows of a results file, or of every ``*.jsonl`` under a folder, as a pandas DataFrame."""
    import pandas as pd

    path = Path(path)
    # hidden files are a killed writer's leftovers (atomic writes go through ".tmp-…" files), never results
    files = sorted(p for p in path.rglob("*.jsonl") if not p.name.startswith(".")) if path.is_dir() else [path]
    records = [json.loads(line) for f in files if f.exists() for line in f.read_text().splitlines() if line]
    return pd.DataFrame.from_records(records, columns=None if records else list(COLUMNS))
