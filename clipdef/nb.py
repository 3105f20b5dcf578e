"""Small helpers for the chapters: the opening set-up, list parameters, and numbers glued into the prose."""

from __future__ import annotations

from typing import Callable, Iterable


def setup(profile: str | None, seed: int = 0, device: str = "auto", check: bool = True, **overrides):
    """The set-up every chapter opens with: the resolved profile (papermill parameter > ``$CLIPDEF_PROFILE`` >
    ``"tiny"``) with the chapter's overrides (a None override keeps the profile's value), checked for what this
    machine lacks (``check=False``: a chapter that reads settings only, such as the recipes); the RNGs seeded, the
    threads set, the book's plotting style on. Returns the profile."""
    from clipdef import plots, profiles, train
    from clipdef.env import seed_all

    cfg = profiles.resolve(profile, seed=seed, device=device, **overrides)
    if check:
        cfg.check()
    seed_all(cfg.seed)
    train.set_threads(cfg.threads)
    plots.use_style()
    return cfg


def as_list(value, cast: Callable = str, default: Iterable = ()) -> list:
    """A list parameter as a list: ``"badnet,sig"`` (papermill and the command line pass text), a list or tuple, a
    single number, or None (``default``). Items are stripped, empty ones dropped, each passed through ``cast``."""
    if value is None:
        return [cast(v) for v in default]
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [cast(item.strip() if isinstance(item, str) else item) for item in items
            if not (isinstance(item, str) and not item.strip())]


def glue(name: str, value, display: bool = False):
    """Make ``value`` citable in the book's prose as {glue:}`name` (myst-nb); a no-op outside a notebook build.

    Every number quoted in a chapter's text goes through here, so prose never carries a typed-in result."""
    try:
        from myst_nb import glue as _glue
    except ImportError:
        return value
    if isinstance(value, str):  # a str's plain-text repr carries quotes; Markdown renders inline without them
        from IPython.display import Markdown

        _glue(name, Markdown(value), display=display)
    else:
        _glue(name, value, display=display)
    return value


def section_rows(rec, ran: bool, **where):
    """The results rows one section of a chapter shows: those this run recorded when it ran the section (``ran``),
    else the published batch's rows of the same chapter and profile, every seed (:func:`clipdef.results.published`).
    ``where``: column → value, or a list of values, that the rows must have."""
    import pandas as pd

    from clipdef import results

    rows = pd.DataFrame(rec.rows) if ran else results.published(rec.profile, rec.chapter)
    for column, value in where.items():
        if not len(rows):
            break
        wanted = value if isinstance(value, (list, tuple, set)) else [value]
        rows = rows[rows[column].isin(wanted)] if column in rows.columns else rows.iloc[:0]
    return rows.reset_index(drop=True)


def measured_by(rows, ran: bool) -> str:
    """Who measured a section's rows, for the prose: this run, or the published batch and its seeds."""
    if ran:
        return "this run"
    if not len(rows):
        return ("nobody yet: this build skips it (`ablations=False`) and the published batch for this profile, if "
                "there is one, has no rows for it (`python -m clipdef grid grids/book.yaml` runs it)")
    seeds = ", ".join(str(s) for s in sorted(int(s) for s in rows["seed"].unique()))
    return f"the published batch (`results/{rows['profile'].iloc[0]}/`, `grids/book.yaml`; seeds {seeds})"


def pct(x: float, digits: int = 1) -> str:
    """0.1234 → '12.3 %' (how the book prints accuracies and ASRs)."""
    return f"{100 * x:.{digits}f} %"
