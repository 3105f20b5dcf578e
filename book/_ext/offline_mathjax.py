"""A Sphinx extension for the book: MathJax served from the build, so formulas typeset offline.

Sphinx loads MathJax from a CDN by default; a reader without internet (the book's default: offline, CPU only) then
sees raw TeX. ``mathjax_path`` in ``_config.yml`` names a file under ``_static/mathjax/`` instead, and this
extension copies MathJax's browser build there from the pinned ``django-static-mathjax`` wheel (MathJax 3.2.2, the
release behind Jupyter Book 1's default ``mathjax@3``; a plain file bundle with no dependencies, installed by
``make env`` like every other package, where npm's ``mathjax`` would need node on the machine).

Copied: the entry file ``mathjax_path`` names and MathJax's sub-folders, which it loads on demand from beside
itself (TeX extensions through autoload, the CHTML fonts, the menu, accessibility and speech); the other combined
entry files are left out. MathJax's licence goes along.
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata
from pathlib import Path

from sphinx.errors import ExtensionError

DISTRIBUTION = "django-static-mathjax"
BUILD_IN_DISTRIBUTION = "mathjax/static/mathjax/es5"  # MathJax's browser build inside the wheel
STATIC_FOLDER = "mathjax"  # under the build's _static; mathjax_path is relative to _static
EXAMPLE_PATH = f"{STATIC_FOLDER}/tex-mml-chtml.js"
MATHJAX_MAJOR = "3"  # the configuration myst writes (window.MathJax = {options: ...}) is MathJax 3's

_INSTALL_HINT = f"run `make env` (or `pip install -e '.[book]'`, which pins {DISTRIBUTION})"


def mathjax_build() -> Path:
    """The installed folder with MathJax's browser build; a clear error if the package is missing or unexpected."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ExtensionError(f"offline_mathjax: {DISTRIBUTION} (MathJax's files) is not installed: "
                             f"{_INSTALL_HINT}") from None
    build = Path(dist.locate_file(BUILD_IN_DISTRIBUTION))
    if not build.is_dir():
        raise ExtensionError(f"offline_mathjax: {DISTRIBUTION} {dist.version} has no {BUILD_IN_DISTRIBUTION}/; "
                             f"{_INSTALL_HINT}")
    return build


def mathjax_version(build: Path) -> str:
    """MathJax's own version, from the package.json beside its browser build."""
    return json.loads((build.parent / "package.json").read_text(encoding="utf-8"))["version"]


def entry_file(mathjax_path: str, build: Path) -> str:
    """The file of MathJax's build that ``mathjax_path`` names (relative to _static/mathjax/)."""
    if "://" in mathjax_path or mathjax_path.startswith("//"):
        raise ExtensionError(f"offline_mathjax: mathjax_path is the URL {mathjax_path}: offline readers would see "
                             f"raw TeX. Set `mathjax_path: {EXAMPLE_PATH}` under `sphinx: config:` in _config.yml")
    prefix = STATIC_FOLDER + "/"
    name = mathjax_path[len(prefix):] if mathjax_path.startswith(prefix) else ""
    if not name or "/" in name or not (build / name).is_file():
        choices = ", ".join(sorted(p.name for p in build.glob("*.js")))
        raise ExtensionError(f"offline_mathjax: mathjax_path {mathjax_path!r} is not one of MathJax's entry files "
                             f"under {prefix} (e.g. {EXAMPLE_PATH}; there are {choices})")
    return name


def copy_mathjax(build: Path, entry: str, destination: Path) -> None:
    """The entry file, every sub-folder it loads from, and the licence, into ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copy2(build / entry, destination / entry)
    for folder in sorted(p for p in build.iterdir() if p.is_dir()):
        shutil.copytree(folder, destination / folder.name, dirs_exist_ok=True)
    shutil.copy2(build.parent / "LICENSE", destination / "LICENSE")


def _check_config(app, config) -> None:
    # At configuration time, so a wrong setting fails before any notebook is executed.
    build = mathjax_build()
    version = mathjax_version(build)
    if version.split(".")[0] != MATHJAX_MAJOR:
        raise ExtensionError(f"offline_mathjax: {DISTRIBUTION} ships MathJax {version}, but the book's MathJax "
                             f"configuration (written by myst-parser) is for MathJax {MATHJAX_MAJOR}; "
                             f"{_INSTALL_HINT}")
    entry_file(config.mathjax_path, build)


def _copy_into_static(app) -> None:
    # Before the pages are written, so Sphinx finds the file and adds its checksum (?v=...) to the script tag.
    if app.builder.format != "html":
        return
    build = mathjax_build()
    copy_mathjax(build, entry_file(app.config.mathjax_path, build), Path(app.outdir) / "_static" / STATIC_FOLDER)


def setup(app):
    app.setup_extension("sphinx.ext.mathjax")  # defines mathjax_path
    app.connect("config-inited", _check_config)
    app.connect("builder-inited", _copy_into_static)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
