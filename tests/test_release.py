"""make release (scripts/release.py): the chapters' pins agree with the version and the repository, and the release
step refuses what it must, on temporary git repositories (the book's own repository is never tagged)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import clipdef

REPO = Path(__file__).resolve().parent.parent
_SPEC = importlib.util.spec_from_file_location("release", REPO / "scripts" / "release.py")
release = importlib.util.module_from_spec(_SPEC)
sys.modules["release"] = release
_SPEC.loader.exec_module(release)

URL = "https://github.com/example/clipdef"


# ------------------------------------------------------------------------------------------------ the book itself


def test_the_chapters_pins_the_version_and_the_repository_agree():
    assert release.read_version(REPO) == clipdef.__version__
    pins = release.chapter_pins(REPO)
    assert len(pins) >= 7 and all(pins.values())  # every chapter installs clipdef in its Colab cell
    assert release.pin_problems(REPO) == []
    assert release.expected_pin(REPO) == f"clipdef @ git+{release.read_repository(REPO)}@v{clipdef.__version__}"


@pytest.mark.parametrize("url", ["https://github.com/example/clipdef", "https://github.com/example/clipdef/",
                                 "https://GitHub.com/example/clipdef.git", "git@github.com:example/clipdef.git",
                                 "https://github.com/example/clipdef.git\n"])
def test_one_spelling_of_a_repository_url(url):
    assert release.normalise(url) == URL


# ------------------------------------------------------------------------------------------------ a temporary project


def _chapter(pin: str | None) -> str:
    colab = ("import sys\nif \"google.colab\" in sys.modules:\n"
             + (f'    %pip install -q "{pin}"\n' if pin else "    pass\n"))
    cells = [{"cell_type": "markdown", "metadata": {}, "source": ["# A chapter\n", "clipdef @ git+prose@v9 is prose"]},
             {"cell_type": "code", "metadata": {"tags": ["remove-cell"]}, "source": colab, "outputs": [],
              "execution_count": None}]
    return json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def _git(root: Path, *args: str) -> str:
    run = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """A committed copy of what make release reads: the Makefile, the script, the version, the config, two chapters."""
    # git on its own: no user or system settings (signing, hooks), and an identity for the commit and the tag
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Release Test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "release-test@example.org")
    root = tmp_path / "book"
    (root / "scripts").mkdir(parents=True)
    for name in ("Makefile", ".gitignore", "scripts/release.py"):
        shutil.copy2(REPO / name, root / name)
    (root / "pyproject.toml").write_text("[project]\nname = 'clipdef'\n")
    (root / "clipdef").mkdir()
    (root / "clipdef" / "__init__.py").write_text('"""clipdef."""\n\n__version__ = "1.2.3"\n')
    (root / "_config.yml").write_text(f"title: t\nrepository:\n  url: {URL}\n  branch: main\n")
    (root / "notebooks").mkdir()
    for name in ("00_world.ipynb", "01_threat.ipynb"):
        (root / "notebooks" / name).write_text(_chapter(f"clipdef @ git+{URL}@v1.2.3"))
    (root / "notebooks" / "scratch.ipynb").write_text(_chapter(None))  # not a chapter (no NN_ prefix)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "the book")
    # make's environment: this interpreter as .venv/bin/python, and a stamp newer than pyproject.toml (ignored files)
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").symlink_to(sys.executable)
    (root / ".venv" / ".clipdef-installed").touch()
    return root


def _make_release(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "release"], cwd=root, capture_output=True, text=True, timeout=120)


def _tags(root: Path) -> list[str]:
    return _git(root, "tag", "--list").split()


def _refusals(root: Path, capsys) -> list[str]:
    assert release.main(["--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("release: refused, nothing tagged")
    return [line[4:] for line in err.splitlines() if line.startswith("  - ")]


def test_make_release_tags_an_annotated_v_version_and_says_how_to_push(project):
    _git(project, "remote", "add", "upstream", "git@github.com:example/clipdef.git")
    run = _make_release(project)
    assert run.returncode == 0, run.stdout + run.stderr
    assert _tags(project) == ["v1.2.3"]
    assert _git(project, "cat-file", "-t", "v1.2.3") == "tag"  # annotated, not lightweight
    assert _git(project, "rev-parse", "v1.2.3^{commit}") == _git(project, "rev-parse", "HEAD")
    assert f"clipdef @ git+{URL}@v1.2.3" in _git(project, "tag", "-l", "--format=%(contents)", "v1.2.3")
    assert f"release: tagged v1.2.3 at {_git(project, 'rev-parse', '--short', 'HEAD')} (the book)" in run.stdout
    assert "git push upstream v1.2.3" in run.stdout  # the remote whose URL is _config.yml's repository


def test_make_release_refuses_an_existing_tag(project):
    assert _make_release(project).returncode == 0
    (project / "README.md").write_text("later\n")
    _git(project, "add", "README.md")
    _git(project, "commit", "-q", "-m", "later")
    again = _make_release(project)
    assert again.returncode != 0
    assert "tag v1.2.3 already exists" in again.stderr and "bump __version__ in clipdef/__init__.py" in again.stderr
    assert _git(project, "rev-parse", "v1.2.3^{commit}") == _git(project, "rev-parse", "HEAD~1")  # not moved


def test_make_release_refuses_a_dirty_tree(project):
    (project / "clipdef" / "__init__.py").write_text('__version__ = "1.2.3"\n# an uncommitted change\n')
    (project / "notes.txt").write_text("untracked\n")
    run = _make_release(project)
    assert run.returncode != 0 and _tags(project) == []
    assert "the working tree is not clean (M clipdef/__init__.py; ?? notes.txt): commit or stash it" in run.stderr


def test_a_chapter_pinning_another_version_is_refused(project, capsys):
    (project / "notebooks" / "01_threat.ipynb").write_text(_chapter(f"clipdef @ git+{URL}@v1.2.2"))
    _git(project, "commit", "-qam", "old pin")
    assert _refusals(project, capsys) == [
        f"notebooks/01_threat.ipynb: pins `clipdef @ git+{URL}@v1.2.2`, expected `clipdef @ git+{URL}@v1.2.3` "
        f"(clipdef/__init__.py says 1.2.3, _config.yml says {URL})"]
    assert _tags(project) == []


def test_a_version_bump_without_the_pins_is_refused(project, capsys):
    (project / "clipdef" / "__init__.py").write_text('__version__ = "1.3.0"\n')
    _git(project, "commit", "-qam", "bump")
    refusals = _refusals(project, capsys)
    assert len(refusals) == 2 and all("expected `clipdef @ git+" + URL + "@v1.3.0`" in r for r in refusals)


def test_a_moved_repository_and_a_chapter_without_its_install_are_refused(project, capsys):
    (project / "_config.yml").write_text("repository:\n  url: https://github.com/elsewhere/clipdef\n")
    (project / "notebooks" / "00_world.ipynb").write_text(_chapter(None))
    _git(project, "commit", "-qam", "moved")
    refusals = _refusals(project, capsys)
    assert refusals[0].startswith("notebooks/00_world.ipynb: no `clipdef @ git+URL@vVERSION` install in its Colab "
                                  "cell; expected `clipdef @ git+https://github.com/elsewhere/clipdef@v1.2.3`")
    assert refusals[1].startswith(f"notebooks/01_threat.ipynb: pins `clipdef @ git+{URL}@v1.2.3`, expected "
                                  f"`clipdef @ git+https://github.com/elsewhere/clipdef@v1.2.3`")
    assert len(refusals) == 2 and _tags(project) == []


def test_every_reason_is_listed_at_once(project, capsys):
    _git(project, "tag", "-a", "v1.2.3", "-m", "by hand")
    (project / "notebooks" / "00_world.ipynb").write_text(_chapter(f"clipdef @ git+{URL}@main"))
    refusals = _refusals(project, capsys)
    assert [r.split(" ")[0] for r in refusals] == ["the", "tag", "notebooks/00_world.ipynb:"]


def test_missing_version_or_repository_say_where_to_put_them(project, capsys):
    (project / "_config.yml").write_text("title: t\n")
    _git(project, "commit", "-qam", "no repository")
    assert _refusals(project, capsys) == ["_config.yml: no `repository: url:` (the repository the Colab cells "
                                          "install from)"]
    (project / "clipdef" / "__init__.py").write_text("VERSION = 1\n")
    _git(project, "commit", "-qam", "no version")
    assert _refusals(project, capsys) == ['clipdef/__init__.py: no line `__version__ = "X.Y.Z"` (the one home of '
                                          'the version)']


def test_outside_a_git_repository_it_says_where_to_run(tmp_path, capsys):
    assert release.main(["--root", str(tmp_path)]) == 2
    assert "is not the top folder of a git repository; run `make release` in the book's checkout" in \
        capsys.readouterr().err
