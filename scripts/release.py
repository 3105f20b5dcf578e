#!/usr/bin/env python3
"""Tag the release that the chapters' Colab cells install (``make release``).

    python scripts/release.py [--root DIR]

Each chapter's Colab cell installs ``clipdef @ git+<repository>@v<version>``: Colab can install it only once the
book's repository has the tag ``v<version>``. This script creates that tag, after checking that

* the working tree is clean (the tag names what is committed, nothing else);
* the tag does not exist yet (a published release is never moved: bump the version instead);
* every chapter (``notebooks/NN_*.ipynb``) pins exactly ``clipdef @ git+<repository>@v<version>``, where
  ``<version>`` is ``__version__`` in ``clipdef/__init__.py`` (the one home of the version) and ``<repository>``
  is ``repository: url:`` in ``_config.yml``.

It then creates the annotated tag ``v<version>`` at HEAD and prints how to push it; it pushes nothing. Exit status
0 when tagged, 1 when refused (every reason listed), 2 when DIR is not the top of a git repository.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

VERSION_FILE = "clipdef/__init__.py"
CONFIG_FILE = "_config.yml"
CHAPTERS = "notebooks/[0-9][0-9]_*.ipynb"  # as clipdef.cli.chapter_names() finds them
VERSION_RE = re.compile(r"""^__version__\s*=\s*["']([^"']+)["']""", re.MULTILINE)
PIN_RE = re.compile(r"""clipdef\s*@\s*git\+(?P<url>[^@\s"']+)@(?P<ref>[^\s"']+)""")
LISTED = 10  # dirty files listed before the rest are counted


class ReleaseError(Exception):
    """A file the release reads is missing or unreadable."""


# ------------------------------------------------------------------------------------------------ what must agree


def read_version(root: Path) -> str:
    """``__version__`` from clipdef/__init__.py, read as text (never imported: it may be another checkout's)."""
    path = root / VERSION_FILE
    match = VERSION_RE.search(path.read_text(encoding="utf-8")) if path.is_file() else None
    if not match:
        raise ReleaseError(f"{VERSION_FILE}: no line `__version__ = \"X.Y.Z\"` (the one home of the version)")
    return match.group(1)


def read_repository(root: Path) -> str:
    """``repository: url:`` from _config.yml: where the book, and the tag, live."""
    import yaml

    path = root / CONFIG_FILE
    config = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    url = ((config or {}).get("repository") or {}).get("url")
    if not url:
        raise ReleaseError(f"{CONFIG_FILE}: no `repository: url:` (the repository the Colab cells install from)")
    return str(url)


def normalise(url: str) -> str:
    """One spelling of a repository URL: ``git@host:path`` as https, no trailing slash or ``.git``, host lowered."""
    url = url.strip()
    scp = re.match(r"^[\w.-]+@([\w.-]+):(?!//)(.+)$", url)
    if scp:
        url = f"https://{scp.group(1)}/{scp.group(2)}"
    url = re.sub(r"(\.git)?/*$", "", url)
    scheme, _, rest = url.partition("://")
    host, _, path = rest.partition("/")
    return f"{scheme.lower()}://{host.lower()}/{path}" if rest else url


def chapter_pins(root: Path) -> dict[str, list[tuple[str, str]]]:
    """Each chapter's ``clipdef @ git+URL@REF`` pins, as (URL, REF), from its code cells."""
    pins = {}
    for path in sorted(root.glob(CHAPTERS)):
        try:
            cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
        except json.JSONDecodeError as exc:
            raise ReleaseError(f"{path.relative_to(root)}: not a notebook ({exc})") from None
        sources = ["".join(c.get("source", "")) for c in cells if c.get("cell_type") == "code"]
        pins[path.relative_to(root).as_posix()] = [(m["url"], m["ref"]) for s in sources for m in PIN_RE.finditer(s)]
    return pins


def expected_pin(root: Path) -> str:
    return f"clipdef @ git+{read_repository(root)}@v{read_version(root)}"


def pin_problems(root: Path) -> list[str]:
    """Why the chapters' pins, clipdef's version and _config.yml's repository disagree; empty when they agree."""
    version, repository = read_version(root), read_repository(root)
    expected = expected_pin(root)
    where = f"({VERSION_FILE} says {version}, {CONFIG_FILE} says {repository})"
    pins = chapter_pins(root)
    if not pins:
        return [f"no chapters ({CHAPTERS}) to check the pin of"]
    problems = []
    for chapter, found in pins.items():
        if not found:
            problems.append(f"{chapter}: no `clipdef @ git+URL@vVERSION` install in its Colab cell; expected "
                            f"`{expected}`")
        for url, ref in found:
            if normalise(url) != normalise(repository) or ref != f"v{version}":
                problems.append(f"{chapter}: pins `clipdef @ git+{url}@{ref}`, expected `{expected}` {where}")
    return problems


# ------------------------------------------------------------------------------------------------ git


def git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)


def is_repository_top(root: Path) -> bool:
    top = git(root, "rev-parse", "--show-toplevel")
    return top.returncode == 0 and Path(top.stdout.strip()).resolve() == root.resolve()


def dirty_files(root: Path) -> list[str]:
    """Changed, staged and untracked (not ignored) files: ``git status --porcelain`` lines."""
    return [line for line in git(root, "status", "--porcelain", "--untracked-files=all").stdout.splitlines() if line]


def tag_commit(root: Path, tag: str) -> str | None:
    """The commit ``tag`` points at, or None when there is no such tag."""
    found = git(root, "rev-parse", "-q", "--verify", f"refs/tags/{tag}^{{commit}}")
    return found.stdout.strip() if found.returncode == 0 else None


def release_problems(root: Path) -> list[str]:
    """Every reason not to tag now; empty when the release can be tagged."""
    problems = []
    dirty = dirty_files(root)
    if dirty:
        listed = "; ".join(line.strip() for line in dirty[:LISTED])
        more = f" and {len(dirty) - LISTED} more" if len(dirty) > LISTED else ""
        problems.append(f"the working tree is not clean ({listed}{more}): commit or stash it, so that the tag names "
                        f"what the chapters install")
    tag = f"v{read_version(root)}"
    commit = tag_commit(root, tag)
    if commit:
        problems.append(f"tag {tag} already exists (at {commit[:12]}): a release is never moved; bump __version__ "
                        f"in {VERSION_FILE} and the chapters' pins to release again")
    if git(root, "rev-parse", "-q", "--verify", "HEAD").returncode != 0:
        problems.append("the repository has no commit to tag")
    return problems + pin_problems(root)


def push_hint(root: Path, repository: str, tag: str) -> str:
    """How to push the tag: to the remote whose URL is the book's repository, if there is one."""
    for name in git(root, "remote").stdout.split():
        if normalise(git(root, "remote", "get-url", name).stdout) == normalise(repository):
            return f"git push {name} {tag}"
    return f"git push <the remote for {repository}> {tag}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path.cwd(), help="the repository (default: the current folder)")
    root = ap.parse_args(argv).root.resolve()
    if not is_repository_top(root):
        print(f"release: {root} is not the top folder of a git repository; run `make release` in the book's "
              f"checkout", file=sys.stderr)
        return 2
    try:
        problems = release_problems(root)
    except ReleaseError as exc:
        problems = [str(exc)]
    if problems:
        print(f"release: refused, nothing tagged ({len(problems)} problem(s)):", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    version, repository = read_version(root), read_repository(root)
    tag = f"v{version}"
    made = git(root, "tag", "-a", tag, "-m", f"clipdef {version}: the release the chapters' Colab cells install "
                                             f"({expected_pin(root)})")
    if made.returncode != 0:
        print(f"release: git tag {tag} failed: {made.stderr.strip()}", file=sys.stderr)
        return 1
    commit, _, subject = git(root, "log", "-1", "--format=%h %s", tag).stdout.strip().partition(" ")
    print(f"release: tagged {tag} at {commit} ({subject if len(subject) <= 60 else subject[:59] + '…'})")
    print(f"release: push it, so that Colab can install `{expected_pin(root)}`: {push_hint(root, repository, tag)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
