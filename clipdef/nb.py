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


def pct(x: float, digits: int = 1) -> str:
    """0.1234 → '12.3 %' (how the book prints accuracies and ASRs)."""
    return f"{100 * x:.{digits}f} %"
