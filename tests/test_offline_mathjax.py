"""book/_ext/offline_mathjax.py: MathJax from the pinned package into _static, and the book's settings that use it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml
from sphinx.errors import ExtensionError

REPO = Path(__file__).resolve().parent.parent
_SPEC = importlib.util.spec_from_file_location("offline_mathjax", REPO / "book" / "_ext" / "offline_mathjax.py")
offline_mathjax = importlib.util.module_from_spec(_SPEC)
sys.modules["offline_mathjax"] = offline_mathjax
_SPEC.loader.exec_module(offline_mathjax)

CONFIG = yaml.safe_load((REPO / "_config.yml").read_text(encoding="utf-8"))


def test_the_book_serves_mathjax_from_its_build():
    sphinx = CONFIG["sphinx"]
    assert sphinx["local_extensions"]["offline_mathjax"] == "book/_ext"
    path = sphinx["config"]["mathjax_path"]
    assert offline_mathjax.entry_file(path, offline_mathjax.mathjax_build()) == "tex-mml-chtml.js"


def test_the_pinned_package_ships_mathjax_3():
    build = offline_mathjax.mathjax_build()
    # Jupyter Book 1 loads mathjax@3 from its CDN by default: the same major release, configured the same way
    assert offline_mathjax.mathjax_version(build).split(".")[0] == offline_mathjax.MATHJAX_MAJOR
    assert (build / "tex-mml-chtml.js").is_file() and (build / "output" / "chtml" / "fonts").is_dir()


@pytest.mark.parametrize("url", ["https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js",
                                 "//cdn.example.org/tex-mml-chtml.js"])
def test_a_cdn_mathjax_path_is_refused_with_what_to_set(url):
    with pytest.raises(ExtensionError, match="raw TeX.*mathjax_path: mathjax/tex-mml-chtml.js"):
        offline_mathjax.entry_file(url, offline_mathjax.mathjax_build())


@pytest.mark.parametrize("path", ["tex-mml-chtml.js", "mathjax/no-such-file.js", "mathjax/output/chtml.js",
                                  "mathjax/"])
def test_a_path_that_is_not_an_entry_file_is_refused_with_the_choices(path):
    with pytest.raises(ExtensionError, match="not one of MathJax's entry files.*tex-chtml.js"):
        offline_mathjax.entry_file(path, offline_mathjax.mathjax_build())


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(offline_mathjax, "DISTRIBUTION", "no-such-mathjax-distribution")
    with pytest.raises(ExtensionError, match="is not installed: run `make env`"):
        offline_mathjax.mathjax_build()


def test_copy_takes_the_entry_file_its_folders_and_the_licence(tmp_path):
    build = tmp_path / "mathjax" / "es5"
    for name in ("tex-mml-chtml.js", "tex-svg-full.js", "input/tex/extensions/physics.js",
                 "output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff"):
        (build / name).parent.mkdir(parents=True, exist_ok=True)
        (build / name).write_text(name)
    (build.parent / "LICENSE").write_text("Apache-2.0")
    out = tmp_path / "_static" / "mathjax"
    offline_mathjax.copy_mathjax(build, "tex-mml-chtml.js", out)
    copied = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert copied == ["LICENSE", "input/tex/extensions/physics.js",
                      "output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff", "tex-mml-chtml.js"]
    offline_mathjax.copy_mathjax(build, "tex-mml-chtml.js", out)  # a rebuild copies over the last one
