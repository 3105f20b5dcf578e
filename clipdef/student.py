"""Student versions of the chapters: every solution replaced by a numbered placeholder, outputs cleared.

A chapter's exercises are the numbered items ("1. ", "2. ", …) under the "## Exercises" heading of one markdown
cell. Each exercise has exactly one solution cell, tagged ``solution``, whose first line names its number:

* a code cell starting ``# Solution 2`` (also tagged ``hide-cell``, so the book shows it collapsed, output
  included, behind a click);
* a markdown cell starting ``:::{admonition} Solution 3`` with ``:class: dropdown`` (markdown cells cannot be
  hidden by tags; a dropdown admonition is collapsed in the book the same way).

``python -m clipdef student [NOTEBOOK_OR_DIR ...] --out student/`` writes the student versions. It refuses a
notebook whose exercises and solutions do not match, so stubs and solutions cannot drift apart.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

SOLUTION_TAG = "solution"
HIDE_TAGS = ("hide-cell", "hide-input", "hide-output")
_EXERCISES_HEADING = re.compile(r"^##\s+Exercises\s*$", re.MULTILINE)
_ITEM = re.compile(r"^(\d+)\.\s")
_SOLUTION_NUMBER = re.compile(r"\bSolution\s+(\d+)\b")


class ExerciseMismatch(ValueError):
    """A notebook's exercises and solution cells do not correspond one to one."""


def cell_source(cell: dict) -> str:
    """A cell's source as one string (nbformat stores it as a string or a list of lines)."""
    src = cell.get("source", "")
    return src if isinstance(src, str) else "".join(src)


def is_solution(cell: dict) -> bool:
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def exercise_numbers(nb: dict, name: str = "notebook") -> list[int]:
    """The numbers of the items under the notebook's "## Exercises" heading (up to the next heading)."""
    cells = [c for c in nb["cells"] if c["cell_type"] == "markdown" and _EXERCISES_HEADING.search(cell_source(c))]
    if len(cells) != 1:
        raise ExerciseMismatch(f"{name}: expected one markdown cell with a '## Exercises' heading, found "
                               f"{len(cells)}")
    text = cell_source(cells[0])
    numbers = []
    for line in text[_EXERCISES_HEADING.search(text).end():].splitlines():
        if line.startswith("#"):
            break
        match = _ITEM.match(line)
        if match:
            numbers.append(int(match.group(1)))
    if numbers != list(range(1, len(numbers) + 1)):
        raise ExerciseMismatch(f"{name}: the exercises are numbered {numbers}; expected 1, 2, … in order")
    return numbers


def solution_number(cell: dict) -> int | None:
    """The N of "Solution N" on the cell's first non-blank line, or None."""
    first = next((line for line in cell_source(cell).splitlines() if line.strip()), "")
    match = _SOLUTION_NUMBER.search(first)
    return int(match.group(1)) if match else None


def check(nb: dict, name: str = "notebook") -> int:
    """The number of exercises, after checking that solution cell k answers exercise k, for every k."""
    exercises = exercise_numbers(nb, name)
    solutions = [solution_number(c) for c in nb["cells"] if is_solution(c)]
    if len(solutions) != len(exercises):
        raise ExerciseMismatch(f"{name}: {len(exercises)} exercises under '## Exercises' but {len(solutions)} "
                               f"solution cells (tagged '{SOLUTION_TAG}'); give every exercise one solution")
    if solutions != exercises:
        raise ExerciseMismatch(f"{name}: the solution cells are numbered {solutions} but the exercises "
                               f"{exercises}; each solution's first line must say 'Solution N', in order")
    return len(exercises)


def placeholder(cell: dict, number: int) -> dict:
    """The stub that replaces a solution: same kind of cell and id, no solution or hide tags, no output."""
    metadata = copy.deepcopy(cell.get("metadata", {}))
    tags = [t for t in metadata.get("tags", []) if t != SOLUTION_TAG and t not in HIDE_TAGS]
    if tags:
        metadata["tags"] = tags
    else:
        metadata.pop("tags", None)
    stub = {"cell_type": cell["cell_type"], "metadata": metadata}
    if "id" in cell:
        stub["id"] = cell["id"]
    if cell["cell_type"] == "code":
        stub.update(execution_count=None, outputs=[], source=f"# Exercise {number}: your solution here")
    else:
        stub["source"] = f"*Exercise {number}: your answer here.*"
    return stub


def student_version(nb: dict, name: str = "notebook") -> dict:
    """A copy of ``nb`` with each solution replaced by its placeholder and every code cell's outputs cleared;
    every other cell is kept as it is. Raises :class:`ExerciseMismatch` when exercises and solutions differ."""
    check(nb, name)
    out = copy.deepcopy(nb)
    cells = []
    for cell in out["cells"]:
        if is_solution(cell):
            cell = placeholder(cell, solution_number(cell))
        elif cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cells.append(cell)
    out["cells"] = cells
    return out


def dumps(nb: dict) -> str:
    """Notebook JSON as nbformat writes it (one-space indent, sorted keys, trailing newline)."""
    return json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def notebook_paths(paths) -> list[Path]:
    """The notebooks named by ``paths``: files as given, folders as their ``*.ipynb`` (sorted)."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(p.glob("*.ipynb"))
        elif p.suffix == ".ipynb" and p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"{p} is neither a notebook (.ipynb) nor a folder")
    if not found:
        raise FileNotFoundError(f"no notebooks in {', '.join(map(str, paths))}")
    return found


def write_student_versions(paths, out: str | Path = "student") -> list[Path]:
    """Write the student version of every notebook in ``paths`` to ``out``. Every notebook is checked first:
    if any mismatches, nothing is written and one error lists them all."""
    from clipdef.env import atomic_path

    out = Path(out)
    notebooks = notebook_paths(paths)
    if any(p.parent.resolve() == out.resolve() for p in notebooks):
        raise ValueError(f"--out {out} holds the source notebooks; the student versions would overwrite the "
                         "solutions. Choose another folder.")
    versions, problems = {}, []
    for path in notebooks:
        try:
            versions[path] = student_version(json.loads(path.read_text()), path.name)
        except ExerciseMismatch as err:
            problems.append(str(err))
    if problems:
        raise ExerciseMismatch("\n".join(problems))
    written = []
    for path, nb in versions.items():
        with atomic_path(out / path.name) as tmp:
            tmp.write_text(dumps(nb))
        written.append(out / path.name)
    return written
