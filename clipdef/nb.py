"""Small helpers for the chapters: glue numbers into the prose, and show the resolved set-up."""

from __future__ import annotations


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
