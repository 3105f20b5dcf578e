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


# ------------------------------------------------------------------------------------------------ offline

# Chapter 3's formulas as Sphinx and myst write them: inline, display, and an amsmath environment with its number.
FORMULAS = r"""<main><section id="density-ratios" class="tex2jax_ignore mathjax_ignore">
<h1>Density ratios</h1>
<p>With <span class="math notranslate nohighlight">\(N_k(q)\)</span> the nearest neighbours:</p>
<div class="math notranslate nohighlight">
\[\mathrm{SLOF}(q) = \frac1k\sum_{o\in N_k(q)} \frac{d_k(q)}{d_k(o)}\]</div>
<div class="math notranslate nohighlight amsmath" id="equation-auroc">
<span class="eqno">(1)<a class="headerlink" href="#equation-auroc">#</a></span>\[\begin{align}
\mathrm{AUROC} &amp;= P(s_p &gt; s_c)
\end{align}\]</div>
</section></main>"""
CDN_MATHJAX = '<script defer="defer" src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>'
LOCAL_MATHJAX = '<script defer="defer" src="../_static/mathjax/tex-mml-chtml.js?v=829402a3"></script>'
MATHJAX_CONFIG = ('<script>window.MathJax = {"options": {"processHtmlClass": '
                  '"tex2jax_process|mathjax_process|math|output_area"}}</script>')


def _math_page(script: str, body: str = FORMULAS) -> str:
    head = f"<!DOCTYPE html>\n<html><head><title>t</title>\n{MATHJAX_CONFIG}\n{script}\n</head>"
    return f"{head}<body>\n{body}\n</body></html>\n"


def _line(html: str, text: str) -> int:
    return next(n for n, line in enumerate(html.splitlines(), 1) if text in line)


def test_the_good_tree_needs_no_internet(site):
    # an <a href> to another host is a link, and <link rel="preconnect"> only warms a connection: neither loads
    assert check_site.check_offline(site) == []


def test_scripts_stylesheets_and_images_from_other_hosts_fail_with_their_url_and_line(site):
    _write(site / "search.html", '<h1>Search</h1>\n<script src="https://cdn.example.org/thebe.js"></script>\n'
                                 '<link rel="stylesheet" href="//fonts.example.org/css?family=Lato">\n'
                                 '<link rel="preload" as="font" href="https://fonts.example.org/lato.woff2">\n'
                                 '<img src="https://img.example.org/badge.svg">\n'
                                 '<link rel="dns-prefetch" href="https://fonts.example.org">\n'
                                 '<script src="data:text/javascript,1"></script><img src="../search.html">')
    failures = check_site.check_offline(site)
    assert [f.split(": ")[0] for f in failures] == ["search.html:2", "search.html:3", "search.html:4", "search.html:5"]
    assert '<script src="https://cdn.example.org/thebe.js"> loads from another host' in failures[0]
    assert '<link href="//fonts.example.org/css?family=Lato">' in failures[1]
    assert "https://fonts.example.org/lato.woff2" in failures[2]
    assert '<img src="https://img.example.org/badge.svg">' in failures[3]
    assert all("serve it from the build's _static, or remove it" in f for f in failures)


def test_an_optional_external_url_is_allowed(site, monkeypatch):
    _write(site / "search.html", '<h1>Search</h1><script src="https://cdn.example.org/thebe.js"></script>'
                                 '<script src="https://cdn.example.org/other.js"></script>')
    monkeypatch.setattr(check_site, "OPTIONAL_EXTERNAL", {"https://cdn.example.org/thebe": "runs on a click only"})
    assert check_site.optional_external("https://cdn.example.org/thebe.js") == "runs on a click only"
    failures = check_site.check_offline(site)
    assert len(failures) == 1 and "other.js" in failures[0]


def test_formulas_are_read_as_sphinx_writes_them(tmp_path):
    parser = check_site._parse(_write(tmp_path / "p.html", _math_page(LOCAL_MATHJAX)), {})
    lines = [line for line, _ in parser.formulas]
    assert [tex for _, tex in parser.formulas] == [
        r"\(N_k(q)\)", r"\[\mathrm{SLOF}(q) = \frac1k\sum_{o\in N_k(q)} \frac{d_k(q)}{d_k(o)}\]",
        r"\[\begin{align} \mathrm{AUROC} &= P(s_p > s_c) \end{align}\]"]  # the equation number is not TeX
    assert lines == sorted(lines) and lines[0] > 5
    assert [(tag, url) for _, tag, _, url in parser.loads] == [("script", LOCAL_MATHJAX.split('"')[3])]


def test_formulas_with_mathjax_from_a_cdn_fail_naming_the_page_and_the_formula(site):
    html = _math_page(CDN_MATHJAX) + '<a name="k-distance"></a>'
    _write(site / "notebooks" / "03_detection.html", html)
    failures = check_site.check_offline(site)
    assert len(failures) == 2  # the script from another host, and the formulas it would have typeset
    assert failures[0].startswith(f'notebooks/03_detection.html:{_line(html, CDN_MATHJAX)}: '
                                  f'<script src="https://cdn.jsdelivr.net/')
    assert failures[1].startswith(rf"notebooks/03_detection.html: 3 formula(s) (line {_line(html, 'N_k(q)')}: "
                                  r"\(N_k(q)\)) but MathJax comes from another host (https://cdn.jsdelivr.net/npm/")
    assert "offline they show as raw TeX" in failures[1] and "mathjax_path" in failures[1]


def test_formulas_without_mathjax_fail(site):
    html = _math_page("") + '<a name="k-distance"></a>'
    _write(site / "notebooks" / "03_detection.html", html)
    assert check_site.check_offline(site) == [
        rf"notebooks/03_detection.html: 3 formula(s) (line {_line(html, 'N_k(q)')}: \(N_k(q)\)) but the page loads "
        r"no MathJax: they show as raw TeX"]


def test_formulas_with_mathjax_from_the_build_pass_and_its_file_is_checked(site):
    _write(site / "notebooks" / "03_detection.html", _math_page(LOCAL_MATHJAX) + '<a name="k-distance"></a>')
    assert check_site.check_offline(site) == []
    failures = check_site.check_links(site).failures
    assert len(failures) == 1 and "missing file _static/mathjax/tex-mml-chtml.js" in failures[0]
    _write(site / "_static" / "mathjax" / "tex-mml-chtml.js", "")
    assert check_site.check_links(site).failures == []


@pytest.mark.parametrize("text, shown", [
    (r"the score \[\mathrm{SLOF}(q) = 1\] is", r"the score \[\mathrm{SLOF}(q) = 1\] is"),
    (r"inline \(d_k(q)\) here", r"inline \(d_k(q)\) here"),
    ("a long stretch of prose before it $$a+b$$", "of prose before it $$a+b$$"),  # 20 characters of context
    (r"\begin{align} a &= b \end{align}", r"\begin{align} a &= b \end{align}"),
    (r"dollar math $\mathrm{LID}(o)$ left unparsed", r"dollar math $\mathrm{LID}(o)$ left unparsed"),
    ("it costs $5, or $10 with tax", None),  # dollars without a TeX command are prose
    (r"the path C:\data\cc3m and a $ sign", None),
    ("plain text", None),
])
def test_raw_tex_finds_delimiters_not_dollars_and_backslashes(text, shown):
    assert check_site.raw_tex(text) == shown


def _formula(tex, typeset=False, error=None, display=True):
    return {"tex": tex, "typeset": typeset, "error": error, "display": display}


def test_math_failures_name_each_formula_not_typeset_display_ones_first():
    math = {"mathjax": "not loaded", "version": None, "texts": [],
            "formulas": [_formula(r"\(q\)", display=False), _formula(r"\[\mathrm{SLOF}(q)\]"),
                         _formula("x", typeset=True)]}
    assert check_site.math_failures("notebooks/03_detection.html", math) == [
        r"notebooks/03_detection.html: formula not typeset (MathJax not loaded), shows as raw TeX: "
        r"\[\mathrm{SLOF}(q)\]",
        r"notebooks/03_detection.html: formula not typeset (MathJax not loaded), shows as raw TeX: \(q\)"]


def test_math_failures_report_tex_errors_stray_tex_and_count_the_rest():
    math = {"mathjax": "finished", "version": "3.2.2",
            "formulas": [_formula(r"\frac{1}", typeset=True, error=r"Missing argument for \frac")]
            + [_formula(rf"\(x_{i}\)") for i in range(7)],
            "texts": [r"Let $$\mathrm{DAO}(q)$$ be", "no TeX here"]}
    failures = check_site.math_failures("p.html", math)
    assert failures[:5] == [rf"p.html: formula not typeset, shows as raw TeX: \(x_{i}\)" for i in range(5)]
    assert failures[5] == r"p.html: formula has a TeX error (Missing argument for \frac): \frac{1}"
    assert failures[6] == (r"p.html: TeX delimiters in the text, not a formula (was the math markup parsed?): "
                           r"Let $$\mathrm{DAO}(q)$$ be")
    assert failures[7] == "p.html: ... and 2 more formula(s) not typeset" and len(failures) == 8
    assert check_site.math_failures("p.html", {"mathjax": "not loaded", "version": None, "formulas": [],
                                               "texts": []}) == []  # no formulas, no MathJax needed


def test_external_requests_fail_once_per_url_unless_optional(monkeypatch):
    monkeypatch.setattr(check_site, "OPTIONAL_EXTERNAL", {"https://unpkg.com/thebe": "loads on a click only"})
    blocked = [("https://cdn.example.org/a.js", "script"), ("https://cdn.example.org/a.js", "script"),
               ("https://fonts.example.org/l.woff2", "font"), ("https://unpkg.com/thebe@0.8/lib/index.js", "script")]
    assert check_site.external_request_failures("p.html", blocked) == [
        "p.html: requested https://cdn.example.org/a.js (script) from another host: offline it is blocked and the "
        "page goes without it; serve it from the build's _static, or remove it",
        "p.html: requested https://fonts.example.org/l.woff2 (font) from another host: offline it is blocked and the "
        "page goes without it; serve it from the build's _static, or remove it"]


def test_main_links_only_fails_a_cdn_mathjax(site, tmp_path, capsys):
    _write(tmp_path / "_toc.yml", "format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/03_detection\n")
    _write(site / "notebooks" / "03_detection.html", _math_page(CDN_MATHJAX) + '<a name="k-distance"></a>')
    out = tmp_path / "report.json"
    assert check_site.main([str(site), "--links-only", "--out", str(out), "--toc", str(tmp_path / "_toc.yml")]) == 1
    err = capsys.readouterr().err
    assert "FAILED with 2 failure(s)" in err and "offline: notebooks/03_detection.html: 3 formula(s)" in err


# ------------------------------------------------------------------------------------------------ offline, in chromium


def _browser_or_skip():
    if not Path(check_site.CHROMIUM).exists():
        pytest.skip(f"{check_site.CHROMIUM} not installed (apt-get install -y chromium chromium-driver)")
    pytest.importorskip("playwright.sync_api", reason="Playwright not installed (the 'book' extra)")
    spec = importlib.util.spec_from_file_location("offline_mathjax",
                                                  Path(__file__).parents[1] / "book" / "_ext" / "offline_mathjax.py")
    offline_mathjax = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(offline_mathjax)
    try:
        return offline_mathjax, offline_mathjax.mathjax_build()
    except Exception as exc:  # noqa: BLE001 - the package is missing: nothing to serve
        pytest.skip(str(exc))


def test_in_chromium_formulas_typeset_from_the_build_and_stay_raw_tex_from_a_cdn(tmp_path):
    offline_mathjax, build = _browser_or_skip()
    root = tmp_path / "html"
    offline_mathjax.copy_mathjax(build, "tex-mml-chtml.js", root / "_static" / "mathjax")
    _write(root / "index.html", '<meta http-equiv="Refresh" content="0; url=book/local.html" />')
    _write(root / "book" / "local.html", _math_page(LOCAL_MATHJAX))
    _write(root / "book" / "cdn.html", _math_page(CDN_MATHJAX))
    broken = FORMULAS.replace(r"\frac{d_k(q)}{d_k(o)}", r"\frac{d_k(q)}").replace("<h1>Density ratios</h1>",
                                                                r"<h1>Density ratios</h1><p>Let $$\mathrm{DAO}$$.</p>")
    _write(root / "book" / "broken.html", _math_page(LOCAL_MATHJAX, broken))
    pages, failures, _ = check_site.check_browser(root, "book/local", [("book/local", None), ("book/cdn", None),
                                                                       ("book/broken", None)], None, None)
    local = next(p for p in pages if p["doc"] == "book/local")
    assert (local["mathjax"], local["mathjax_version"], local["formulas"], local["formulas_typeset"]) == \
        ("finished", offline_mathjax.mathjax_version(build), 3, 3)
    assert not [f for f in failures if f.startswith(("index.html", "book/local.html"))], failures
    cdn = [f for f in failures if f.startswith("book/cdn.html")]
    assert cdn[0] == ("book/cdn.html: requested https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js "
                      "(script) from another host: offline it is blocked and the page goes without it; serve it from "
                      "the build's _static, or remove it")
    assert cdn[1].startswith(r"book/cdn.html: formula not typeset (MathJax not loaded), shows as raw TeX: "
                             r"\[\mathrm{SLOF}(q) = \frac1k")
    assert len(cdn) == 4  # the script and the three formulas
    assert [f for f in failures if f.startswith("book/broken.html")] == [
        r"book/broken.html: formula has a TeX error (Missing argument for \frac): \mathrm{SLOF}(q) = "
        r"\frac1k\sum_{o\in N_k(q)} \frac{d_k(q)}",
        r"book/broken.html: TeX delimiters in the text, not a formula (was the math markup parsed?): "
        r"Let $$\mathrm{DAO}$$."]
