"""The student version of the chapters: solutions replaced by numbered placeholders, and refused on a mismatch."""

import json
import re

import pytest

from clipdef import cli, student


def code(source, tags=(), outputs=(), cell_id=None):
    cell = {"cell_type": "code", "execution_count": 3 if outputs else None, "metadata": {"tags": list(tags)},
            "outputs": list(outputs), "source": source}
    return {**cell, "id": cell_id} if cell_id else cell


def markdown(source, tags=(), cell_id=None):
    cell = {"cell_type": "markdown", "metadata": {"tags": list(tags)} if tags else {}, "source": source}
    return {**cell, "id": cell_id} if cell_id else cell


OUTPUT = {"name": "stdout", "output_type": "stream", "text": "0.5\n"}


def small_notebook(n_solutions=3):
    solutions = [
        code("# Solution 1: the mean\nprint(sum(xs) / len(xs))", ["solution", "hide-cell"], [OUTPUT], "s1"),
        code(["# Solution 2\n", "sorted(xs)[-1]"], ["solution", "hide-cell"], cell_id="s2"),
        markdown(":::{admonition} Solution 3\n:class: dropdown\nBecause the mean is not robust.\n:::",
                 ["solution"], "s3"),
    ]
    return {
        "cells": [
            markdown("# A chapter", cell_id="c0"),
            code('profile = "tiny"', ["parameters"], cell_id="c1"),
            code("xs = [0.25, 0.75]\nprint(sum(xs) / len(xs))", outputs=[OUTPUT], cell_id="c2"),
            markdown("## Summary\n\n* a point\n\n## Exercises\n\n1. Compute the mean.\n2. Find the largest\n"
                     "   value (a wrapped line, not an item).\n3. Why not the mean?", cell_id="c3"),
            *solutions[:n_solutions],
        ],
        "metadata": {"kernelspec": {"name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def test_solutions_become_numbered_placeholders_and_nothing_else_changes():
    nb = small_notebook()
    before = json.dumps(nb, sort_keys=True)
    out = student.student_version(nb, "small.ipynb")
    assert json.dumps(nb, sort_keys=True) == before  # the input is not modified
    assert [c["source"] for c in out["cells"][4:]] == ["# Exercise 1: your solution here",
                                                       "# Exercise 2: your solution here",
                                                       "*Exercise 3: your answer here.*"]
    assert [c["cell_type"] for c in out["cells"][4:]] == ["code", "code", "markdown"]
    assert [c["id"] for c in out["cells"][4:]] == ["s1", "s2", "s3"]
    for stub in out["cells"][4:]:
        assert "tags" not in stub["metadata"]  # no 'solution', and not collapsed in the student's book
        if stub["cell_type"] == "code":
            assert stub["outputs"] == [] and stub["execution_count"] is None
    # every other cell is byte-identical, except that outputs are cleared
    for original, kept in zip(nb["cells"][:4], out["cells"][:4]):
        if original["cell_type"] == "code":
            assert kept["outputs"] == [] and kept["execution_count"] is None
            original = {**original, "outputs": [], "execution_count": None}
        assert json.dumps(kept, sort_keys=True) == json.dumps(original, sort_keys=True)
    assert out["metadata"] == nb["metadata"]
    text = student.dumps(out)
    assert "Solution" not in text and "sorted(xs)[-1]" not in text and "not robust" not in text


def test_exercises_are_the_numbered_items_under_the_heading():
    assert student.exercise_numbers(small_notebook()) == [1, 2, 3]
    assert student.check(small_notebook()) == 3


@pytest.mark.parametrize("n_solutions", [2, 0])
def test_a_mismatch_is_refused_naming_the_notebook_and_the_counts(n_solutions):
    with pytest.raises(student.ExerciseMismatch,
                       match=rf"small\.ipynb: 3 exercises .* but {n_solutions} solution cells"):
        student.student_version(small_notebook(n_solutions), "small.ipynb")


def test_solutions_out_of_order_or_unnumbered_are_refused():
    nb = small_notebook()
    nb["cells"][4], nb["cells"][5] = nb["cells"][5], nb["cells"][4]
    with pytest.raises(student.ExerciseMismatch, match=r"numbered \[2, 1, 3\] but the exercises \[1, 2, 3\]"):
        student.check(nb, "small.ipynb")
    nb = small_notebook()
    nb["cells"][4]["source"] = "print('no number')"
    with pytest.raises(student.ExerciseMismatch, match=r"numbered \[None, 2, 3\]"):
        student.check(nb, "small.ipynb")


def test_a_notebook_without_exercises_is_refused():
    nb = small_notebook(0)
    nb["cells"][3]["source"] = "## Summary\n\n* a point"
    with pytest.raises(student.ExerciseMismatch, match="one markdown cell with a '## Exercises' heading, found 0"):
        student.check(nb, "small.ipynb")


def test_cli_writes_student_versions_and_refuses_mismatches(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.ipynb").write_text(student.dumps(small_notebook()))
    assert cli.main(["student", str(src), "--out", str(tmp_path / "student")]) == 0
    written = json.loads((tmp_path / "student" / "good.ipynb").read_text())
    assert written["cells"][4]["source"] == "# Exercise 1: your solution here"
    assert "wrote 1 student notebook(s)" in capsys.readouterr().out

    (src / "bad.ipynb").write_text(student.dumps(small_notebook(1)))
    assert cli.main(["student", str(src), "--out", str(tmp_path / "again")]) == 2
    assert re.search(r"error: bad\.ipynb: 3 exercises .* but 1 solution cells", capsys.readouterr().err)
    assert not (tmp_path / "again").exists()  # nothing is written when any notebook mismatches
    assert cli.main(["student", str(src / "good.ipynb"), "--out", str(src)]) == 2
    assert "would overwrite the solutions" in capsys.readouterr().err
    assert cli.main(["student", str(tmp_path / "missing.ipynb"), "--out", str(tmp_path / "x")]) == 2
    assert "neither a notebook" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# The real chapters
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def student_chapters(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    cli.main(["student", "--out", str(out)])  # default: every chapter
    return out


@pytest.mark.parametrize("chapter", cli.chapter_names())
def test_every_chapter_has_one_solution_per_exercise(chapter):
    nb = json.loads((cli.REPO_NOTEBOOKS / chapter).read_text())
    n = student.check(nb, chapter)
    assert n >= 2
    solutions = [c for c in nb["cells"] if student.is_solution(c)]
    assert nb["cells"][-n:] == solutions  # the solutions close the chapter, after its exercises
    for cell in solutions:  # collapsed in the book: hide-cell for code, a dropdown admonition for markdown
        if cell["cell_type"] == "code":
            assert "hide-cell" in cell["metadata"]["tags"]
        else:
            assert ":class: dropdown" in student.cell_source(cell)


@pytest.mark.parametrize("chapter", cli.chapter_names())
def test_student_chapter_keeps_no_solution_and_keeps_the_parameters(chapter, student_chapters):
    nb = json.loads((cli.REPO_NOTEBOOKS / chapter).read_text())
    out = json.loads((student_chapters / chapter).read_text())
    assert len(out["cells"]) == len(nb["cells"])
    assert not any(student.is_solution(c) for c in out["cells"])
    text = student.dumps(out)
    others = "\n".join(student.cell_source(c) for c in nb["cells"] if not student.is_solution(c))
    for cell in (c for c in nb["cells"] if student.is_solution(c)):
        for line in student.cell_source(cell).splitlines():
            if len(line.strip()) > 12 and line.strip() not in others:
                assert json.dumps(line.strip())[1:-1] not in text, f"{chapter}: solution line survived: {line}"
    stubs = [student.cell_source(c) for c in out["cells"][-student.check(nb, chapter):]]
    assert all(s.startswith(f"# Exercise {i}:") or s.startswith(f"*Exercise {i}:")
               for i, s in enumerate(stubs, 1))
    params = [c for c in out["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1 and 'profile = "tiny"' in student.cell_source(params[0])
