"""Refuse notebooks that carry outputs: the chapters are committed without them (the book executes them).

    python scripts/check_notebooks.py notebooks/*.ipynb        exit 1 and name each notebook with outputs
    python scripts/check_notebooks.py --strip notebooks/*.ipynb   remove the outputs in place

The git hook in .githooks/pre-commit runs the check on the notebooks a commit adds or changes (``make env`` points
git at .githooks).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cells_with_outputs(nb: dict) -> list[int]:
    return [i for i, c in enumerate(nb["cells"])
            if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count") is not None)]


def strip(nb: dict) -> dict:
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*")
    parser.add_argument("--strip", action="store_true", help="remove the outputs instead of refusing them")
    args = parser.parse_args(argv)
    bad = []
    for path in map(Path, args.notebooks):
        nb = json.loads(path.read_text())
        cells = cells_with_outputs(nb)
        if cells and args.strip:
            path.write_text(json.dumps(strip(nb), indent=1, ensure_ascii=False) + "\n")
        elif cells:
            bad.append(f"{path}: outputs in cell(s) {', '.join(map(str, cells))}")
    if bad:
        print("notebooks are committed without outputs:\n  " + "\n  ".join(bad) +
              "\nstrip them with: python scripts/check_notebooks.py --strip " +
              " ".join(b.split(":")[0] for b in bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
