"""scripts/execute_book.py: the chapters executed side by side in dependency order into the jupyter-cache that
Jupyter Book renders from, and a failing chapter stops the build."""

import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))   # importable by name: the chapters execute in spawned processes
import execute_book  # noqa: E402


def test_every_chapter_of_the_toc_has_its_place_in_the_schedule():
    chapters = [nb.stem for nb in execute_book.book_notebooks()]
    assert chapters[0] == "00_world_and_clip" and "06_report" in chapters
    assert set(execute_book.AFTER) == set(chapters)   # a new chapter must say what it reuses
    needs = execute_book.schedule(execute_book.book_notebooks(), execute_book.AFTER)
    order = {name: i for i, name in enumerate(chapters)}
    assert all(order[a] < order[n] for n, prerequisites in needs.items() for a in prerequisites)
    assert set(needs["06_report"]) >= {"02_attacks", "03_detection", "04_cleanclip_vs_cleanerclip", "05_cgd"}


def test_an_unknown_chapter_waits_for_all_before_it_and_absent_prerequisites_are_dropped(tmp_path):
    nbs = [tmp_path / f"{n}.ipynb" for n in ("a", "b", "new")]
    assert execute_book.schedule(nbs, {"a": [], "b": ["a", "elsewhere"]}) == {"a": [], "b": ["a"], "new": ["a", "b"]}


def write(path: Path, *cells: str) -> Path:
    path.write_text(nbformat.writes(nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(c) for c in cells],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})))
    return path


def test_chapters_run_after_their_prerequisites_into_the_cache_jupyter_book_reads(tmp_path):
    from jupyter_cache import get_cache

    marker = tmp_path / "first-done"
    first = write(tmp_path / "first.ipynb", f"import time; time.sleep(1); open({str(marker)!r}, 'w').close()")
    second = write(tmp_path / "second.ipynb", f"import os; assert os.path.exists({str(marker)!r}); print(6 * 7)")
    alone = write(tmp_path / "alone.ipynb", "print('alone')")
    log = []
    status = execute_book.execute_book([first, second, alone], jobs=2, cache_path=tmp_path / "cache",
                                       after={"first": [], "second": ["first"], "alone": []}, log=log.append)
    assert status == 0, "\n".join(log)
    started = [line.split("executing ")[1] for line in log if "executing" in line]
    assert started.index("first") < started.index("second")
    cache = get_cache(str(tmp_path / "cache"))
    for path in (first, second, alone):   # what myst-nb's cache mode looks up, unexecuted notebook in hand
        record = cache.match_cache_notebook(nbformat.read(path, as_version=4))
        assert record is not None
    _, merged = cache.merge_match_into_notebook(nbformat.read(second, as_version=4))
    assert merged.cells[0].outputs[0]["text"].strip() == "42"


def test_a_failing_chapter_stops_the_build_with_its_error_and_leaves_nothing_cached_for_it(tmp_path):
    from jupyter_cache import get_cache

    bad = write(tmp_path / "bad.ipynb", "raise ValueError('poison rate must lie in [0, 1], got 2')")
    later = write(tmp_path / "later.ipynb", "print('never')")
    log = []
    status = execute_book.execute_book([bad, later], jobs=2, cache_path=tmp_path / "cache",
                                       after={"bad": [], "later": ["bad"]}, log=log.append)
    assert status == 1
    text = "\n".join(log)
    assert "bad FAILED" in text and "poison rate must lie in [0, 1], got 2" in text and "executing later" not in text
    with pytest.raises(KeyError):
        get_cache(str(tmp_path / "cache")).match_cache_notebook(nbformat.read(bad, as_version=4))
