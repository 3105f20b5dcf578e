"""scripts/check_site.py: the link checker on small HTML trees (no browser), the toc and figure counting."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("check_site", Path(__file__).parents[1] / "scripts" / "check_site.py")
check_site = importlib.util.module_from_spec(_SPEC)
sys.modules["check_site"] = check_site
_SPEC.loader.exec_module(check_site)


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


CHAPTER = """<!DOCTYPE html>
<html><head>
<link rel="stylesheet" href="../_static/style.css?digest=abc123" />
<script src="../_static/book.js?v=1"></script>
<link rel="preconnect" href="https://fonts.example.org" />
</head><body>
<a class="skip-link" href="#main-content">Skip</a>
<a href="#">top</a>
<main id="main-content">
<h1>Attacks<a class="headerlink" href="#attacks">#</a></h1>
<section id="attacks">
<a href="../book/intro.html">intro</a>
<a href="../book/intro.html#why-clip">why CLIP</a>
<a href="../book/">the book folder</a>
<a href="03_detection.html?highlight=x#k-distance">detection</a>
<a href="https://arxiv.org/abs/2401.00001">paper</a>
<a href="mailto:someone@example.org">mail</a>
<a href="../_sources/notebooks/02_attacks.ipynb">download</a>
<div class="cell_output"><img alt="fig" src="../_images/fig%201.png" /></div>
<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" />
<form action="../search.html" method="get"></form>
</section>
</main></body></html>
"""


@pytest.fixture()
def site(tmp_path):
    root = tmp_path / "html"
    _write(root / "index.html", '<meta http-equiv="Refresh" content="0; url=book/intro.html" />'
                                '<a href="book/intro.html">go</a>')
    _write(root / "book" / "intro.html", '<h1 id="intro">Intro</h1><h2 id="why-clip">Why</h2>'
                                         '<a href="../notebooks/02_attacks.html#attacks">ch2</a>'
                                         '<img src="../_static/logo.svg">')
    _write(root / "book" / "index.html", "<h1>book</h1>")
    _write(root / "notebooks" / "02_attacks.html", CHAPTER)
    _write(root / "notebooks" / "03_detection.html", '<h1>Detection</h1><a name="k-distance"></a>')
    _write(root / "search.html", "<h1>Search</h1>")
    _write(root / "_static" / "style.css", "body {}")
    _write(root / "_static" / "book.js", "")
    _write(root / "_static" / "logo.svg", "<svg xmlns='http://www.w3.org/2000/svg'/>")
    _write(root / "_images" / "fig 1.png", b"\x89PNG\r\n\x1a\n")
    _write(root / "_sources" / "notebooks" / "02_attacks.ipynb", "{}")
    return root


def test_good_tree_passes_and_counts_each_kind(site):
    report = check_site.check_links(site)
    assert report.failures == []
    assert report.files == 6
    assert report.checked["image"] == 2  # the figure and the logo; the data: URL is inline, not a link
    assert report.checked["static"] == 2  # css and js, their ?digest query ignored
    # #main-content, #attacks, intro#why-clip, 03_detection#k-distance (a query ignored, an <a name>), ch2#attacks
    assert report.checked["anchor"] == 5
    # "#" (this page), book/intro.html twice, book/ (→ book/index.html), the search form's action
    assert report.checked["page"] == 5
    assert report.checked["other"] == 1  # the notebook download
    assert report.external == {"https": 2, "mailto": 1}


def test_theme_templates_under_static_are_not_pages(site):
    # pydata-sphinx-theme ships its Jinja macros as _static/webpack-macros.html: unrendered URLs, never served
    _write(site / "_static" / "webpack-macros.html", "<link href=\"{{ pathto('_static/styles/theme.css', 1) }}\">")
    report = check_site.check_links(site)
    assert report.failures == [] and report.skipped == ["_static/webpack-macros.html"] and report.files == 6


def _messages(site) -> list[str]:
    return check_site.check_links(site).failures


def test_missing_page_fails_naming_the_file_and_the_link(site):
    (site / "book" / "intro.html").unlink()
    failures = _messages(site)
    chapter = [f for f in failures if f.startswith("notebooks/02_attacks.html:")]
    assert chapter and all("missing file book/intro.html" in f for f in chapter)
    assert any('<a href="../book/intro.html">' in f for f in chapter)
    assert any(f.startswith("index.html:1: ") and 'href="book/intro.html"' in f for f in failures)


def test_missing_anchor_fails(site):
    _write(site / "notebooks" / "03_detection.html", "<h1>Detection</h1>")
    failures = _messages(site)
    assert len(failures) == 1
    assert failures[0].startswith("notebooks/02_attacks.html:")
    assert 'href="03_detection.html?highlight=x#k-distance"' in failures[0]
    assert "no element with id 'k-distance' in notebooks/03_detection.html" in failures[0]


def test_missing_anchor_within_the_same_page_fails(site):
    html = site / "notebooks" / "02_attacks.html"
    html.write_text(CHAPTER.replace('id="main-content"', 'id="main"'), encoding="utf-8")
    failures = _messages(site)
    assert len(failures) == 1
    assert 'href="#main-content"' in failures[0]
    assert "no element with id 'main-content' in notebooks/02_attacks.html" in failures[0]


def test_missing_image_fails_with_the_line(site):
    (site / "_images" / "fig 1.png").unlink()
    failures = _messages(site)
    assert len(failures) == 1
    line = CHAPTER.splitlines().index('<div class="cell_output"><img alt="fig" src="../_images/fig%201.png" /></div>')
    assert failures[0].startswith(f"notebooks/02_attacks.html:{line + 1}: ")
    assert '<img src="../_images/fig%201.png">' in failures[0]
    assert "missing file _images/fig 1.png" in failures[0]


def test_missing_static_file_and_link_outside_the_build_fail(site):
    (site / "_static" / "book.js").unlink()
    _write(site / "search.html", '<h1>Search</h1><a href="../../etc/passwd">x</a>')
    failures = _messages(site)
    assert any("book.js" in f and "missing file _static/book.js" in f for f in failures)
    assert any(f.startswith("search.html:1: ") and "points outside the build" in f for f in failures)
    assert len(failures) == 2


def test_toc_pages_reads_root_and_chapters_in_order(tmp_path):
    toc = _write(tmp_path / "_toc.yml", """format: jb-book
root: book/intro
parts:
  - caption: Getting started
    chapters:
      - file: book/how_to_run.md
  - caption: Chapters
    chapters:
      - file: notebooks/00_world
        sections:
          - file: notebooks/00b
      - file: notebooks/01_threat.ipynb
""")
    assert check_site.toc_pages(toc) == ("book/intro", ["book/how_to_run", "notebooks/00_world", "notebooks/00b",
                                                         "notebooks/01_threat"])


def test_expected_figures_follows_myst_nb_render_priority(tmp_path):
    png = {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure size 400x400 with 1 Axes>"}

    def code(outputs, tags=()):
        return {"cell_type": "code", "metadata": {"tags": list(tags)}, "source": "", "outputs": outputs,
                "execution_count": 1}

    nb = {"cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "# T"},
        code([{"output_type": "display_data", "data": png, "metadata": {}}]),
        code([{"output_type": "execute_result", "data": {"image/svg+xml": "<svg/>", "text/plain": "x"},
               "metadata": {}, "execution_count": 1}]),
        # a DataFrame: text/html wins over a (hypothetical) image
        code([{"output_type": "execute_result", "data": {"text/html": "<table/>", "image/png": "x"},
               "metadata": {}, "execution_count": 1}]),
        code([{"output_type": "display_data", "data": png, "metadata": {}}], tags=["remove-output"]),
        code([{"output_type": "stream", "name": "stdout", "text": "hello"}]),
        # myst-nb glue with display=False: prefixed mime types, not drawn
        code([{"output_type": "display_data", "data": {"application/papermill.record/image/png": "x"},
               "metadata": {"scrapbook": {"name": "f", "mime_prefix": "application/papermill.record/"}}}]),
    ], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = _write(tmp_path / "nb.ipynb", json.dumps(nb))
    assert check_site.expected_figures(path) == 2


def test_a_cell_that_draws_unconditionally_must_have_an_image(tmp_path):
    png = {"output_type": "display_data", "data": {"image/png": "x", "text/plain": "f"}, "metadata": {}}

    def code(source, outputs=()):
        return {"cell_type": "code", "metadata": {}, "source": source, "outputs": list(outputs), "execution_count": 1}

    nb = {"cells": [
        code("import matplotlib.pyplot as plt\nplots.use_style()\nsns.set_theme()"),  # set-up, draws nothing
        code("fig, ax = plt.subplots()\nax.plot([0, 1])", [png]),
        code(["x = 1\n", "plots.image_grid(images, ncols=4);"]),  # draws, but no image: the silent failure
        code("if path.exists():\n    g = sns.relplot(frame, x='n', y='s')"),  # conditional: not required
        code("ax = table.plot.barh(figsize=(6, 5))\nplt.close()"),
        {"cell_type": "markdown", "metadata": {}, "source": "plt.subplots() in prose"},
    ], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = _write(tmp_path / "nb.ipynb", json.dumps(nb))
    assert check_site.plotting_cells_without_figure(path) == [
        (2, "plots.image_grid(images, ncols=4);"), (4, "ax = table.plot.barh(figsize=(6, 5))")]


def test_main_links_only_reports_failures_and_writes_the_report(site, tmp_path, capsys):
    build = site.parent
    _write(tmp_path / "_toc.yml", "format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/02_attacks\n")
    out = tmp_path / "report.json"
    assert check_site.main([str(site), "--links-only", "--out", str(out), "--toc", str(tmp_path / "_toc.yml")]) == 0
    assert "check-site: OK" in capsys.readouterr().out
    (site / "_images" / "fig 1.png").unlink()
    assert check_site.main([str(site), "--links-only", "--out", str(out), "--toc", str(tmp_path / "_toc.yml")]) == 1
    err = capsys.readouterr().err
    assert "FAILED with 1 failure" in err and "missing file _images/fig 1.png" in err
    report = json.loads(out.read_text())
    assert report["ok"] is False and len(report["failures"]) == 1
    assert not (build / "check").exists()  # --out given, --links-only: nothing else written next to the build
