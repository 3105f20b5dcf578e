"""``python -m clipdef``: run a chapter notebook with parameters (papermill), list chapters and profiles.

    python -m clipdef run notebooks/00_world_and_clip.ipynb -p profile tiny -p seed 1
    python -m clipdef list
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

REPO_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def parse_value(text: str):
    """Command-line text → int, float, bool, None or str (as a reader would expect for ``-p seed 1``)."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def notebook_parameters(notebook: str | Path) -> dict:
    """The parameters a notebook declares in its cell tagged ``parameters`` (name → default as written)."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    if not declared:
        raise ValueError(f"{notebook} has no cell tagged 'parameters'; it cannot be run with parameters")
    return {name: info["default"] for name, info in declared.items()}


def validate_parameters(notebook: str | Path, params: dict) -> None:
    """Unknown parameters and profiles fail at once, with the list of valid ones."""
    from clipdef import profiles

    valid = notebook_parameters(notebook)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise SystemExit(f"error: unknown parameter(s) {unknown} for {Path(notebook).name}; "
                         f"valid parameters: {', '.join(sorted(valid))}")
    if "profile" in params and params["profile"] not in profiles.names():
        raise SystemExit(f"error: unknown profile {params['profile']!r}; valid profiles: "
                         f"{', '.join(profiles.names())}")


def output_name(notebook: str | Path, params: dict) -> str:
    """``<stem>__<hash of the parameters>.ipynb``: one output per distinct parameter set."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return f"{Path(notebook).stem}__{digest}.ipynb"


def run_notebook(notebook: str | Path, params: dict, out_dir: str | Path = "runs/out",
                 timeout: int | None = None, progress: bool = True) -> Path:
    """Execute a notebook with papermill into ``out_dir``; the output appears only once execution succeeded."""
    import papermill

    from clipdef.env import atomic_path

    notebook = Path(notebook)
    if not notebook.exists():
        raise SystemExit(f"error: notebook {notebook} does not exist; chapters: {', '.join(chapter_names())}")
    validate_parameters(notebook, params)
    out = Path(out_dir) / output_name(notebook, params)
    with atomic_path(out) as tmp:
        papermill.execute_notebook(str(notebook), str(tmp), parameters=params, cwd=str(notebook.parent),
                                   progress_bar=progress, execution_timeout=timeout, kernel_name="python3",
                                   request_save_on_cell_execute=False)
    return out


def chapter_names() -> list[str]:
    return sorted(p.name for p in REPO_NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipdef", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute a chapter notebook with parameters (papermill)")
    run.add_argument("notebook")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    run.add_argument("--out", default="runs/out", help="folder for the executed notebook (default runs/out)")
    run.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    sub.add_parser("list", help="list chapters, profiles and each chapter's parameters")
    args = parser.parse_args(argv)

    if args.command == "list":
        from clipdef import profiles

        print("profiles:", ", ".join(f"{p.name} ({p.description})" for p in profiles.PROFILES.values()))
        for name in chapter_names():
            print(f"{name}: {', '.join(notebook_parameters(REPO_NOTEBOOKS / name))}")
        return 0
    params = {name: parse_value(value) for name, value in args.parameter}
    out = run_notebook(args.notebook, params, args.out, args.timeout)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
