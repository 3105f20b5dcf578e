#!/usr/bin/env python3
r"""Check a built copy of the book: links, what would need the internet, then each page of the toc in a browser.

    python scripts/check_site.py _build/html [--screenshot PATH] [--out REPORT.json]

1. Links (pure Python, no browser): every relative ``href``/``src`` of every page of the build (each ``.html`` file
   outside ``_static``, where the themes keep unrendered Jinja macro files) — pages, ``#id`` anchors (checked
   against the ids of the target page), images, css/js under ``_static`` — must resolve to an existing file inside
   the build, and an anchor to an element with that id (or ``<a name>``). External links (http, https, mailto, ...)
   are counted, never fetched.
2. Offline (pure Python): the book must read without internet. A page that loads a script, stylesheet, image, font
   or frame from another host fails, with its URL (unless that URL is listed in ``OPTIONAL_EXTERNAL``, with why the
   page reads fine without it); a page with formulas (``span.math``/``div.math``, as Sphinx writes them) must load
   MathJax from the build, else they show as raw TeX.
3. Browser: Debian's chromium (``/usr/bin/chromium``), driven by Playwright, loads each page listed in ``_toc.yml``
   (the root and every chapter; and index.html, which must redirect to the root) from a local http server on
   127.0.0.1, each in a fresh browser context (a first visit). Each must answer 200, have a non-empty
   ``<h1>``, raise no uncaught error and log no console error; every ``<img>`` must be loaded
   (``complete && naturalWidth > 0``). Requests to other hosts are aborted at once (the build machines are offline,
   as a reader's may be), and each one fails the page with its URL and resource type (``OPTIONAL_EXTERNAL`` aside).
   Every formula must be typeset once MathJax has finished (an ``mjx-container`` inside each ``span.math`` and
   ``div.math``, no TeX error), and no text outside code may show TeX delimiters (``\(``, ``\[``, ``$$``,
   ``\begin{``, or ``$...\command...$``): each failure names the page and the formula. A chapter page must show
   exactly as many output figures as its executed notebook (``_build/jupyter_execute/<chapter>.ipynb``) has image
   outputs, counted as myst-nb renders them: a chapter whose notebook plots must show every plot, and one whose run
   made none (the report chapter, when no benchmark results exist) is not required to show any.
4. A full-page screenshot of one chapter (default ``notebooks/02_attacks``) and a JSON report.

Exit status 0 with a one-line summary on success; 1 with every failure listed otherwise; 2 on a usage error.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
EXTERNAL_SCHEMES = {"http", "https", "mailto"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".ico", ".bmp"}
# myst-nb's HTML render priority (lower wins): an output is drawn as an <img> when its best mime type is an image.
MIME_PRIORITY = {
    "application/vnd.jupyter.widget-view+json": 10,
    "application/javascript": 20,
    "text/html": 30,
    "image/svg+xml": 40,
    "image/png": 50,
    "image/gif": 60,
    "image/jpeg": 70,
    "text/markdown": 80,
    "text/latex": 90,
    "text/plain": 100,
}
IMAGE_MIMES = {"image/svg+xml", "image/png", "image/gif", "image/jpeg"}
REMOVE_OUTPUT_TAGS = {"remove-output", "remove_output", "remove-cell", "remove_cell"}
# Attributes that hold a URL the page loads or links to (srcset is split separately).
URL_ATTRS = {"href", "src", "action", "poster", "xlink:href"}
SCHEME_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
# Requests to other hosts that a page may make and still read correctly offline: URL prefix -> why. Every other
# script, stylesheet, font, image or frame a page loads from another host fails the check with its URL. None is
# needed today: the theme bundles its icons and fonts, MathJax comes from _static (book/_ext/offline_mathjax.py),
# thebe's script is fetched only when a reader presses "Live Code" (a launch button this book does not enable), and
# myst-nb adds require.js and the widget manager (a CDN) only to pages with ipywidgets state, which no chapter has.
OPTIONAL_EXTERNAL: dict[str, str] = {}
# <link rel=...> values that make the browser fetch the target (preconnect and dns-prefetch only warm a connection).
LOADING_RELS = {"stylesheet", "preload", "modulepreload", "prefetch", "icon", "shortcut", "apple-touch-icon",
                "manifest"}
# Elements whose src (object: data) the browser fetches while loading the page.
LOADING_TAGS = {"script", "img", "iframe", "frame", "embed", "source", "audio", "video", "track", "input", "object"}
MATH_TAGS = {"span", "div"}  # Sphinx writes <span class="math"> (inline) and <div class="math"> (display)
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


# ------------------------------------------------------------------------------------------------ links, pure Python


class _PageParser(HTMLParser):
    """Collects the ids (and ``<a name>``s) of one page, and every URL it refers to with its line number."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refs: list[tuple[int, str, str, str]] = []  # (line, tag, attribute, url)
        self.loads: list[tuple[int, str, str, str]] = []  # what the browser fetches: (line, tag, attribute, url)
        self.formulas: list[tuple[int, str]] = []  # (line, TeX) of each span.math / div.math
        self._math_depth = 0  # > 0 inside a formula: its own text is at depth 1 (an equation number is deeper)
        self._math_text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self._track_formula(tag, attrs)
        self._track_load(tag, attrs)
        line = self.getpos()[0]
        for name, value in attrs:
            if value is None:
                continue
            if name == "id" or (name == "name" and tag == "a"):
                self.ids.add(value)
            elif name in URL_ATTRS or (name == "data" and tag == "object"):
                if tag == "base":
                    continue
                self.refs.append((line, tag, name, value))
            elif name == "srcset":
                for candidate in value.split(","):
                    url = candidate.strip().split(" ")[0]
                    if url:
                        self.refs.append((line, tag, name, url))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if self._math_depth and tag not in VOID_TAGS:
            self.handle_endtag(tag)  # <x/> opens and closes

    def handle_endtag(self, tag):
        if not self._math_depth or tag in VOID_TAGS:
            return
        self._math_depth -= 1
        if not self._math_depth:
            self.formulas[-1] = (self.formulas[-1][0], " ".join("".join(self._math_text).split()))

    def handle_data(self, data):
        if self._math_depth == 1:
            self._math_text.append(data)

    def _track_formula(self, tag, attrs):
        if self._math_depth:
            if tag not in VOID_TAGS:
                self._math_depth += 1
        elif tag in MATH_TAGS and "math" in (dict(attrs).get("class") or "").split():
            self._math_depth, self._math_text = 1, []
            self.formulas.append((self.getpos()[0], ""))

    def _track_load(self, tag, attrs):
        values = {name: value for name, value in attrs if value is not None}
        if tag == "link" and set((values.get("rel") or "").lower().split()) & LOADING_RELS and "href" in values:
            self.loads.append((self.getpos()[0], tag, "href", values["href"]))
        elif tag in LOADING_TAGS:
            attr = "data" if tag == "object" else "src"
            if attr in values and (tag != "input" or values.get("type", "").lower() == "image"):
                self.loads.append((self.getpos()[0], tag, attr, values[attr]))


def _parse(path: Path, cache: dict) -> _PageParser:
    if path not in cache:
        parser = _PageParser()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        parser.close()
        cache[path] = parser
    return cache[path]


@dataclass
class LinkReport:
    files: int = 0
    checked: dict = field(default_factory=lambda: {"page": 0, "anchor": 0, "image": 0, "static": 0, "other": 0})
    external: dict = field(default_factory=dict)  # scheme -> count (not fetched)
    skipped: list = field(default_factory=list)  # .html files under _static: theme assets, not pages
    failures: list = field(default_factory=list)

    @property
    def total_checked(self) -> int:
        return sum(self.checked.values())

    def as_dict(self) -> dict:
        return {"html_files": self.files, "skipped_static_html": list(self.skipped),
                "checked": dict(self.checked, total=self.total_checked),
                "external_not_fetched": dict(self.external, total=sum(self.external.values())),
                "failures": list(self.failures)}


def _kind(tag: str, attr: str, target: Path, root: Path, has_fragment: bool) -> str:
    rel = target.relative_to(root).as_posix()
    if tag == "img" or (tag == "source" and attr in {"src", "srcset"}) or target.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    if rel.startswith("_static/"):
        return "static"
    if target.suffix.lower() == ".html":
        return "anchor" if has_fragment else "page"
    return "other"


def check_links(html_dir: Path) -> LinkReport:
    """Resolve every internal URL of every .html page under ``html_dir``; one failure message per broken URL.

    Pages are the .html files outside ``_static/``: the themes copy their Jinja macro files (``webpack-macros.html``,
    with unrendered ``{{ pathto(...) }}`` URLs) into ``_static`` as assets. They are never served as pages; they are
    listed in ``skipped`` and still checked as link targets."""
    root = html_dir.resolve()
    report = LinkReport()
    parsed: dict[Path, _PageParser] = {}  # each page parsed once, for its links and as an anchor target
    for page in sorted(root.rglob("*.html")):
        if page.relative_to(root).parts[0] == "_static":
            report.skipped.append(page.relative_to(root).as_posix())
            continue
        report.files += 1
        source = page.relative_to(root).as_posix()
        for line, tag, attr, url in _parse(page.resolve(), parsed).refs:
            where = f'{source}:{line}: <{tag} {attr}="{url}">'
            url = url.strip()
            scheme = SCHEME_RE.match(url)
            if scheme or url.startswith("//"):
                name = scheme.group(1).lower() if scheme else "//"
                if name in {"data", "javascript", "blob"}:
                    continue  # inline content, not a link
                report.external[name] = report.external.get(name, 0) + 1
                continue
            parts = urlsplit(url)
            path, fragment = unquote(parts.path), unquote(parts.fragment)
            if not path:
                target = page.resolve()  # "#id" or "?query": this very page
            elif path.startswith("/"):
                target = (root / path.lstrip("/")).resolve()
            else:
                target = (page.parent / path).resolve()
            if target != root and root not in target.parents:
                report.failures.append(f"{where}: points outside the build ({target})")
                continue
            if target.is_dir():
                target = target / "index.html"
            kind = _kind(tag, attr, target, root, bool(fragment))
            report.checked[kind] += 1
            if not target.is_file():
                report.failures.append(f"{where}: missing file {target.relative_to(root).as_posix()}")
                continue
            if fragment and target.suffix.lower() in {".html", ".htm"}:
                if fragment not in _parse(target, parsed).ids:
                    report.failures.append(f"{where}: no element with id '{fragment}' in "
                                           f"{target.relative_to(root).as_posix()}")
    return report


# ------------------------------------------------------------------------------------------------ offline, pure Python


def _is_external(url: str) -> bool:
    scheme = SCHEME_RE.match(url)
    return url.startswith("//") or (bool(scheme) and scheme.group(1).lower() not in {"data", "blob", "javascript"})


def optional_external(url: str) -> str | None:
    """Why a page reads fine offline without ``url`` (its entry in OPTIONAL_EXTERNAL), or None: it is needed."""
    for prefix, why in OPTIONAL_EXTERNAL.items():
        if url.startswith(prefix):
            return why
    return None


def _is_mathjax(url: str) -> bool:
    return "mathjax" in urlsplit(url).path.lower()


def _shorten(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_offline(html_dir: Path) -> list[str]:
    """What would break on a reader's machine without internet, one message per page and URL or formula.

    A page fails for each script, stylesheet, image, font or frame it loads from another host (blocked offline)
    unless OPTIONAL_EXTERNAL says why it can do without it; and a page with formulas fails when it does not load
    MathJax from the build (no MathJax at all, or MathJax from another host): its formulas would show as raw TeX."""
    root = html_dir.resolve()
    failures: list[str] = []
    parsed: dict[Path, _PageParser] = {}
    for page in sorted(root.rglob("*.html")):
        source = page.relative_to(root).as_posix()
        if source.startswith("_static/"):
            continue  # theme templates, not pages (see check_links)
        parser = _parse(page.resolve(), parsed)
        for line, tag, attr, url in parser.loads:
            url = url.strip()
            if _is_external(url) and optional_external(url) is None:
                failures.append(f'{source}:{line}: <{tag} {attr}="{url}"> loads from another host: offline it is '
                                f"blocked and the page goes without it; serve it from the build's _static, or "
                                f"remove it")
        failures += _formula_failures(source, parser)
    return failures


def _formula_failures(source: str, parser: _PageParser) -> list[str]:
    if not parser.formulas:
        return []
    line, tex = parser.formulas[0]
    what = f"{len(parser.formulas)} formula(s) (line {line}: {_shorten(tex)})"
    mathjax = [url.strip() for _, tag, _, url in parser.loads if tag == "script" and _is_mathjax(url)]
    if not mathjax:
        return [f"{source}: {what} but the page loads no MathJax: they show as raw TeX"]
    if all(_is_external(url) for url in mathjax):
        return [f"{source}: {what} but MathJax comes from another host ({mathjax[0]}): offline they show as raw "
                f"TeX; serve it from the build (mathjax_path in _config.yml, book/_ext/offline_mathjax.py)"]
    return []  # a local MathJax: check_links checks that the file exists, the browser that it typesets


# ------------------------------------------------------------------------------------------------ the table of contents


def toc_pages(toc_path: Path) -> tuple[str, list[str]]:
    """(root docname, chapter docnames in order) from a Jupyter Book 1 ``_toc.yml``."""
    import yaml

    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8"))
    chapters: list[str] = []

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                chapters.append(str(entry["file"]))
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    for part in toc.get("parts") or []:
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    walk(toc.get("sections"))
    return str(toc["root"]), [_docname(c) for c in chapters]


def _docname(name: str) -> str:
    for suffix in (".ipynb", ".md", ".rst"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def expected_figures(executed_nb: Path) -> int:
    """How many outputs of an executed notebook myst-nb draws as an <img> on the HTML page."""
    nb = json.loads(executed_nb.read_text(encoding="utf-8"))
    n = 0
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        tags = set(cell.get("metadata", {}).get("tags", []))
        if tags & REMOVE_OUTPUT_TAGS:
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") not in {"display_data", "execute_result"}:
                continue
            mimes = [m for m in output.get("data", {}) if m in MIME_PRIORITY]
            if mimes and min(mimes, key=MIME_PRIORITY.__getitem__) in IMAGE_MIMES:
                n += 1
    return n


# A statement at the top level of a cell (not under an `if`) that draws: the cell must end with a figure.
PLOT_CALL = re.compile(
    r"^(?=\S).*(?:"
    r"\bplt\.(?!(?:close|show|rc|rcdefaults|ion|ioff|style|switch_backend)\b)\w+\("
    r"|\bsns\.(?!(?:set|set_theme|set_style|set_context|set_palette|color_palette|axes_style)\b)\w+\("
    r"|\bplots\.(?!use_style\b)\w+\("
    r"|\.plot(?:\.\w+)?\()"
)


def plotting_cells_without_figure(executed_nb: Path) -> list[tuple[int, str]]:
    """(cell index, the drawing line) of each code cell that draws unconditionally but has no image output."""
    nb = json.loads(executed_nb.read_text(encoding="utf-8"))
    missing = []
    for index, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        calls = [line for line in source.splitlines() if PLOT_CALL.match(line)]
        has_image = any(set(o.get("data", {})) & IMAGE_MIMES for o in cell.get("outputs", []))
        if calls and not has_image:
            missing.append((index, calls[0].strip()))
    return missing


def _has_outputs(executed_nb: Path) -> bool:
    nb = json.loads(executed_nb.read_text(encoding="utf-8"))
    return any(cell.get("outputs") for cell in nb.get("cells", []) if cell.get("cell_type") == "code")


# ------------------------------------------------------------------------------------------------ the browser


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass


def serve(directory: Path):
    """A read-only http server for ``directory`` on 127.0.0.1 and a free port, in a daemon thread."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


_IMAGES_JS = """async () => {
  const imgs = Array.from(document.images);
  for (const img of imgs) if (!img.complete) img.scrollIntoView();
  await Promise.race([
    Promise.all(imgs.map(img => img.complete ? null :
      new Promise(r => { img.addEventListener('load', r); img.addEventListener('error', r); }))),
    new Promise(r => setTimeout(r, 15000)),
  ]);
  window.scrollTo(0, 0);
  return imgs.map(img => ({
    src: img.getAttribute('src'), complete: img.complete,
    width: img.naturalWidth, height: img.naturalHeight,
    figure: !!img.closest('.cell_output'),
  }));
}"""
_H1_JS = "() => Array.from(document.querySelectorAll('h1')).map(h => h.textContent.trim().replace(/[¶#]$/, '').trim())"
# Once MathJax has typeset the page (or given up): each formula Sphinx wrote, typeset or not, and the text outside code
# and formulas that holds a backslash or a dollar (where raw TeX would show; raw_tex() looks for delimiters in it).
_MATH_JS = r"""async () => {
  const mj = window.MathJax;
  let state = 'not loaded';
  if (mj && mj.startup && mj.startup.promise) {
    state = await Promise.race([
      mj.startup.promise.then(() => 'finished', e => 'failed: ' + e),
      new Promise(r => setTimeout(() => r('still typesetting after 20 s'), 20000)),
    ]);
  }
  // the TeX of each typeset formula (the page keeps only MathJax's output), by its span.math / div.math
  const source = new Map();
  if (mj && mj.startup && mj.startup.document && mj.startup.document.math) {
    for (const item of mj.startup.document.math) {
      const node = item.start && item.start.node;
      const el = node && (node.nodeType === Node.TEXT_NODE ? node.parentElement : node);
      const box = el && el.closest('span.math, div.math');
      if (box) source.set(box, (source.has(box) ? source.get(box) + ' ' : '') + item.math);
    }
  }
  const formulas = Array.from(document.querySelectorAll('span.math, div.math')).map(el => {
    const own = Array.from(el.childNodes).filter(n => n.nodeType === Node.TEXT_NODE).map(n => n.textContent);
    // a TeX error, or an undefined macro (MathJax's noundefined shows it in red; seen in its assistive MathML)
    const error = el.querySelector('mjx-merror, merror');
    const undefined_ = Array.from(el.querySelectorAll('mtext[mathcolor="red"]'))
      .map(t => t.textContent).filter(t => t.startsWith('\\'));
    return {
      display: el.tagName === 'DIV',
      typeset: !!el.querySelector('mjx-container'),
      error: error ? (error.getAttribute('data-mjx-error') || error.textContent).trim()
           : undefined_.length ? 'undefined control sequence ' + undefined_.join(', ') : null,
      tex: (source.get(el) || own.join(' ')).replace(/\s+/g, ' ').trim(),
    };
  });
  const skip = 'script, style, noscript, template, textarea, pre, code, kbd, samp, .highlight, mjx-container, ' +
               'span.math, div.math';
  const texts = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (/[\\$]/.test(n.textContent) && !(n.parentElement && n.parentElement.closest(skip))) texts.push(n.textContent);
  }
  return {mathjax: state, version: (mj && mj.version) || null, formulas, texts};
}"""
# TeX left in the text: display and inline delimiters, an environment, or $...$ around a TeX command.
RAW_TEX = re.compile(r"\\\(|\\\[|\$\$|\\begin\{|\$[^$\n]*\\[A-Za-z]+[^$\n]*\$")
FORMULAS_LISTED = 5  # per page and kind of failure; the rest are counted


def check_browser(html_dir: Path, root: str, docs: list[tuple[str, int | None]], screenshot_doc: str | None,
                  screenshot: Path | None, chromium: str = CHROMIUM) -> tuple[list[dict], list[str], dict]:
    """Load index.html (Jupyter Book's redirect to ``root``), then each (docname, expected figures or None) page.

    Returns (per-page results, failures, browser info)."""
    from playwright.sync_api import sync_playwright

    failures: list[str] = []
    pages: list[dict] = []
    server, origin = serve(html_dir)
    info: dict = {"origin": origin, "chromium": chromium, "args": CHROMIUM_ARGS}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            info["version"] = browser.version
            blocked: list[tuple[str, str]] = []  # (url, resource type)

            def route(r):
                url = r.request.url
                if url.startswith((origin + "/", "data:", "blob:")):
                    r.continue_()
                else:  # offline machines: fail other hosts at once instead of waiting for DNS; reported per page
                    blocked.append((url, r.request.resource_type))
                    r.abort("internetdisconnected")

            # Each page in a fresh context (empty storage and cache): a reader's first visit, whatever the order.
            for doc, expected, shot, redirect_to in ([("index", None, None, root)]
                                                     + [(d, e, screenshot if d == screenshot_doc else None, None)
                                                        for d, e in docs]):
                context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
                context.route("**/*", route)
                pages.append(_check_page(context, origin, doc, expected, blocked, failures, shot,
                                         redirect_to=redirect_to))
                context.close()
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    return pages, failures, info


def _check_page(context, origin, doc, expected, blocked, failures, screenshot, redirect_to=None) -> dict:
    url = f"{origin}/{doc}.html"
    name = f"{doc}.html"
    page = context.new_page()
    errors: list[str] = []
    console: list[tuple[str, str]] = []  # (text, url the message is about)
    failed_local: dict[str, str] = {}  # url -> why
    start_blocked = len(blocked)

    def on_console(msg):
        if msg.type == "error":
            console.append((msg.text, (msg.location or {}).get("url", "")))

    def on_failed(req):
        if req.url.startswith(origin + "/"):
            failed_local.setdefault(req.url, str(req.failure))

    def on_response(resp):
        if resp.url.startswith(origin + "/") and resp.status >= 400:
            failed_local.setdefault(resp.url, f"HTTP {resp.status}")

    page.on("pageerror", lambda exc: errors.append(str(getattr(exc, "message", exc)).strip()))
    page.on("console", on_console)
    page.on("requestfailed", on_failed)
    page.on("response", on_response)
    result: dict = {"doc": doc, "url": url}
    try:
        response = page.goto(url, wait_until="load", timeout=60_000)
        result["status"] = response.status if response else None
        if redirect_to is not None:
            page.wait_for_url(f"{origin}/{redirect_to}.html", wait_until="load", timeout=30_000)
        try:
            page.wait_for_load_state("networkidle", timeout=10_000)
        except Exception:  # noqa: BLE001 - a page that never idles is still checked as it stands
            pass
        result["final_url"] = page.url
        result["images"] = page.evaluate(_IMAGES_JS)
        result["math"] = page.evaluate(_MATH_JS)
        h1 = [t for t in page.evaluate(_H1_JS) if t]
        result["h1"] = h1[0] if h1 else None
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
            result["screenshot"] = str(screenshot)
    except Exception as exc:  # noqa: BLE001 - reported as this page's failure
        failures.append(f"{name}: could not be checked: {str(exc).strip().splitlines()[0]}"
                        + (f" (expected a redirect to {redirect_to}.html)" if redirect_to else ""))
        result["error"] = str(exc)
        page.close()
        return result
    page.close()

    if result["status"] != 200:
        failures.append(f"{name}: HTTP {result['status']}")
    if not result["h1"]:
        failures.append(f"{name}: no <h1> with text" + (f" (after redirecting to {result['final_url']})"
                                                          if redirect_to else ""))
    for e in errors:
        failures.append(f"{name}: uncaught page error: {e}")
    blocked_here = blocked[start_blocked:]
    for text, src in console:
        if text.startswith("Failed to load resource") and (src in failed_local or not src.startswith(origin + "/")):
            continue  # an aborted request to another host (counted), or a local one (reported once, below)
        failures.append(f"{name}: console error: {text}" + (f" ({src})" if src else ""))
    for u, why in failed_local.items():
        failures.append(f"{name}: failed to load {u[len(origin):]} ({why})")
    for i in result["images"]:
        if not (i["complete"] and i["width"] > 0):
            failures.append(f"{name}: image not rendered: {i['src']} (complete={i['complete']}, "
                            f"naturalWidth={i['width']})")
    failures += external_request_failures(name, blocked_here)
    failures += math_failures(name, result["math"])
    figures = [i for i in result["images"] if i["figure"] and i["complete"] and i["width"] > 0]
    formulas = result.pop("math")
    result.update(figures=len(figures), expected_figures=expected, external_blocked=len(blocked_here),
                  external_urls=sorted({u for u, _ in blocked_here}), page_errors=errors,
                  console_errors=[t for t, _ in console], failed_local=failed_local,
                  mathjax=formulas["mathjax"], mathjax_version=formulas["version"],
                  formulas=len(formulas["formulas"]), formulas_typeset=sum(f["typeset"] and not f["error"]
                                                                          for f in formulas["formulas"]))
    if expected is not None and len(figures) != expected:
        failures.append(f"{name}: {len(figures)} rendered figure(s), but its executed notebook has {expected} "
                        f"image output(s)")
    return result


def external_request_failures(name: str, blocked: list[tuple[str, str]]) -> list[str]:
    """One failure per URL of another host the page requested (blocked, as offline), OPTIONAL_EXTERNAL aside."""
    failures, seen = [], set()
    for url, kind in blocked:
        if url in seen or optional_external(url) is not None:
            continue
        seen.add(url)
        failures.append(f"{name}: requested {url} ({kind}) from another host: offline it is blocked and the page "
                        f"goes without it; serve it from the build's _static, or remove it")
    return failures


def raw_tex(text: str) -> str | None:
    """The stretch of ``text`` from just before its first TeX delimiter, or None when it shows none."""
    match = RAW_TEX.search(text)
    return " ".join(text[max(0, match.start() - 20):].split()) if match else None


def math_failures(name: str, math: dict) -> list[str]:
    """Failures for formulas MathJax did not typeset (or typeset with a TeX error) and raw TeX in the text.

    ``math`` is what _MATH_JS returns: MathJax's state, each formula (typeset? error? its TeX) and the page's text
    outside code and formulas that holds a backslash or a dollar."""
    formulas = math["formulas"]
    raw = sorted((f for f in formulas if not f["typeset"]), key=lambda f: not f["display"])  # display ones first
    broken = [f for f in formulas if f["typeset"] and f["error"]]
    stray = [snippet for snippet in map(raw_tex, math["texts"]) if snippet]
    why = "" if math["mathjax"] == "finished" else f" (MathJax {math['mathjax']})"
    failures = [f"{name}: formula not typeset{why}, shows as raw TeX: {_shorten(f['tex'])}"
                for f in raw[:FORMULAS_LISTED]]
    failures += [f"{name}: formula has a TeX error ({f['error']}): {_shorten(f['tex'])}"
                 for f in broken[:FORMULAS_LISTED]]
    failures += [f"{name}: TeX delimiters in the text, not a formula (was the math markup parsed?): "
                 f"{_shorten(snippet)}" for snippet in stray[:FORMULAS_LISTED]]
    for kind, found in (("formula(s) not typeset", raw), ("formula(s) with a TeX error", broken),
                        ("stretch(es) of raw TeX in the text", stray)):
        if len(found) > FORMULAS_LISTED:
            failures.append(f"{name}: ... and {len(found) - FORMULAS_LISTED} more {kind}")
    return failures


# ------------------------------------------------------------------------------------------------ main


def _png_size(path: Path) -> tuple[int, int] | None:
    head = path.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("html_dir", type=Path, help="the built HTML (e.g. _build/html)")
    ap.add_argument("--screenshot", type=Path, default=None,
                    help="full-page screenshot of --screenshot-page (default: <html_dir>/../check/"
                         "screenshot-<chapter>.png, i.e. _build/check/screenshot-02_attacks.png)")
    ap.add_argument("--screenshot-page", default="notebooks/02_attacks", help="docname of the page to capture")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON report (default: <html_dir>/../check/report.json)")
    ap.add_argument("--toc", type=Path, default=None,
                    help="_toc.yml (default: the one two levels above html_dir, as in <book>/_build/html)")
    ap.add_argument("--executed", type=Path, default=None,
                    help="executed notebooks (default: <html_dir>/../jupyter_execute, where myst-nb writes them)")
    ap.add_argument("--chromium", default=CHROMIUM, help=f"browser binary (default {CHROMIUM})")
    ap.add_argument("--links-only", action="store_true", help="skip the browser (links only)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    html_dir = args.html_dir.resolve()
    if not (html_dir / "index.html").is_file():
        print(f"check-site: {html_dir}/index.html not found; build the book first (make book)", file=sys.stderr)
        return 2
    build = html_dir.parent
    toc_path = (args.toc or build.parent / "_toc.yml").resolve()
    executed = (args.executed or build / "jupyter_execute").resolve()
    check_dir = build / "check"
    screenshot_doc = args.screenshot_page
    screenshot = (args.screenshot or check_dir / f"screenshot-{Path(screenshot_doc).name}.png").resolve()
    out = (args.out or check_dir / "report.json").resolve()
    if not toc_path.is_file():
        print(f"check-site: {toc_path} not found; pass --toc", file=sys.stderr)
        return 2

    failures: list[str] = []
    links = check_links(html_dir)
    failures += [f"link: {f}" for f in links.failures]
    failures += [f"offline: {f}" for f in check_offline(html_dir)]
    t_links = time.perf_counter() - t0

    root, chapters = toc_pages(toc_path)
    docs: list[tuple[str, int | None]] = []
    notebooks: dict[str, dict] = {}
    for doc in [root] + chapters:
        if not (html_dir / f"{doc}.html").is_file():
            failures.append(f"toc: {doc} is listed in {toc_path.name} but {doc}.html is not in the build")
        source_nb = toc_path.parent / f"{doc}.ipynb"
        expected = None
        if source_nb.is_file():
            executed_nb = executed / f"{doc}.ipynb"
            if not executed_nb.is_file():
                failures.append(f"toc: {doc} is a notebook but its executed copy {executed_nb} is missing "
                                f"(cannot tell how many figures its page must show; pass --executed)")
            elif not _has_outputs(executed_nb):
                failures.append(f"toc: {executed_nb} has no outputs at all: was it executed?")
            else:
                expected = expected_figures(executed_nb)
                silent = plotting_cells_without_figure(executed_nb)
                for index, line in silent:
                    failures.append(f"notebook: {executed_nb.name} cell {index} draws ({line}) but has no image output")
                notebooks[doc] = {"executed": str(executed_nb), "image_outputs": expected,
                                  "drawing_cells_without_image": silent}
        docs.append((doc, expected))
    if not args.links_only and screenshot_doc not in [d for d, _ in docs]:
        failures.append(f"screenshot: {screenshot_doc} is not a page of {toc_path.name}")

    pages: list[dict] = []
    info: dict = {}
    t1 = time.perf_counter()
    if not args.links_only:
        if not Path(args.chromium).exists():
            failures.append(f"browser: {args.chromium} not found (install it: apt-get install -y chromium "
                            f"chromium-driver), or pass --links-only")
        else:
            try:
                import playwright.sync_api  # noqa: F401
            except ImportError:
                failures.append("browser: Playwright is not installed (pip install playwright, the 'book' extra)")
            else:
                pages, browser_failures, info = check_browser(html_dir, root, docs, screenshot_doc, screenshot,
                                                              args.chromium)
                failures += [f"browser: {f}" for f in browser_failures]
        if pages and not screenshot.is_file():
            failures.append(f"screenshot: {screenshot} was not written")
    t_browser = time.perf_counter() - t1
    seconds = time.perf_counter() - t0

    images = sum(len(p.get("images", [])) for p in pages)
    figures = sum(p.get("figures", 0) for p in pages)
    external = sum(p.get("external_blocked", 0) for p in pages)
    formulas = sum(p.get("formulas_typeset", 0) for p in pages)
    report = {
        "html_dir": str(html_dir), "toc": str(toc_path), "ok": not failures, "failures": failures,
        "links": links.as_dict(), "notebooks": notebooks, "pages": pages, "browser": info,
        "screenshot": str(screenshot) if screenshot.is_file() and pages else None,
        "screenshot_size": _png_size(screenshot) if screenshot.is_file() and pages else None,
        "summary": {"pages": len(pages), "images": images, "figures": figures, "formulas_typeset": formulas,
                    "external_requests_blocked": external},
        "seconds": {"links": round(t_links, 2), "browser": round(t_browser, 2), "total": round(seconds, 2)},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    ext = sum(links.external.values())
    if failures:
        print(f"check-site: FAILED with {len(failures)} failure(s) ({len(pages)} pages loaded, {images} images, "
              f"{links.total_checked} internal links in {links.files} pages; {seconds:.1f} s):", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        print(f"check-site: report in {out}", file=sys.stderr)
        return 1
    browser_part = ("browser skipped" if args.links_only else
                    f"{len(pages)} pages in chromium {info.get('version', '?')}, {images} images ({figures} figures) "
                    f"rendered, {formulas} formulas typeset, {external} optional external requests blocked")
    print(f"check-site: OK: {browser_part}; {links.total_checked} internal links in {links.files} pages resolve "
          f"({ext} external not fetched, {len(links.skipped)} theme templates in _static skipped); "
          f"{seconds:.1f} s (links {t_links:.1f} s, browser {t_browser:.1f} s); "
          f"report {out}" + (f", screenshot {screenshot}" if pages else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
