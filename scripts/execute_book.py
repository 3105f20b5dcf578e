"""Execute the book's chapters side by side, each as soon as the chapters whose artifacts it reuses are done, into
Jupyter Book's execution cache, from which ``jupyter-book build`` then renders them (``execute_notebooks: cache``).

Executed one after another, as Jupyter Book 1 does, the chapters leave a core idle for minutes: chapter 3 scores
detectors in its kernel on one core, and every chapter evaluates its models there between trainings. Side by side,
what one chapter leaves idle another uses. Nothing is computed twice: the chapters share the cached stages
(``clipdef.stages``), a stage asked for by two chapters at once is made under a lock by the first and loaded by the
second, and a chapter starts after the chapters it reads (``AFTER``).

Each chapter runs exactly as Jupyter Book runs it (jupyter-cache's ``single_nb_execution``, in the notebook's folder,
with ``_config.yml``'s timeout and ``allow_errors``). The cache is emptied first, so a build never shows an output
older than itself. A failing chapter stops the build: its error and cell are printed, the other chapters are stopped,
and the exit status is 1.

    python scripts/execute_book.py            # every notebook of _toc.yml
    python scripts/execute_book.py --jobs 1   # one at a time (the order of the table of contents)
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "_build" / ".jupyter_cache"   # where Jupyter Book 1 looks by default (_build/.jupyter_cache)

# The chapters whose cached artifacts a chapter reuses, or whose results rows it reads: it starts once they are done.
# (A chapter asking for a stage another is still making waits on its lock instead, so these only save that wait.)
AFTER = {
    "00_world_and_clip": [],                       # the world and the tiny CLIP everything starts from
    "01_threat_model": ["00_world_and_clip"],
    "02_attacks": ["00_world_and_clip"],           # the backdoored CLIPs of chapters 3 and 4, chapter 5's guide
    "03_detection": ["02_attacks"],
    "04_cleanclip_vs_cleanerclip": ["02_attacks"],
    "05_cgd": ["00_world_and_clip"],
    "06_report": ["02_attacks", "03_detection", "04_cleanclip_vs_cleanerclip", "05_cgd"],  # this build's rows
    "07_recipes": [],
}
# Longest first among the ready ones (seconds on 2 cores, tiny profile): the critical path starts early.
EXPECTED_SECONDS = {"05_cgd": 660, "04_cleanclip_vs_cleanerclip": 490, "02_attacks": 400, "03_detection": 380,
                    "00_world_and_clip": 240}


def book_notebooks(toc: Path = ROOT / "_toc.yml") -> list[Path]:
    """The notebooks of the table of contents, in its order."""
    def files(node):
        if isinstance(node, dict):
            if "file" in node:
                yield node["file"]
            for value in node.values():
                yield from files(value)
        elif isinstance(node, list):
            for item in node:
                yield from files(item)

    return [ROOT / f"{f}.ipynb" for f in files(yaml.safe_load(toc.read_text())) if (ROOT / f"{f}.ipynb").exists()]


def execution_settings(config: Path = ROOT / "_config.yml") -> dict:
    execute = yaml.safe_load(config.read_text()).get("execute", {})
    return {"timeout": execute.get("timeout", 30), "allow_errors": bool(execute.get("allow_errors", False))}


def schedule(notebooks: list[Path], after: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each notebook's prerequisites among those to run; an unknown chapter waits for every one before it (the
    safe order), and a prerequisite not being run is taken as done."""
    names = [nb.stem for nb in notebooks]
    unknown = {n: names[:i] for i, n in enumerate(names) if n not in after}
    return {n: unknown[n] if n in unknown else [a for a in after[n] if a in names] for n in names}


def _execute(path: str, timeout: int, allow_errors: bool) -> tuple[str, float, str | None, object]:
    """Execute one notebook (in a worker process) as Jupyter Book does; return it executed, or the error."""
    import nbformat
    from jupyter_cache.executors.utils import single_nb_execution

    nb = nbformat.read(path, as_version=4)
    result = single_nb_execution(nb, cwd=str(Path(path).parent), timeout=timeout, allow_errors=allow_errors,
                                 meta_override=True)
    return path, result.time, result.exc_string if result.err else None, None if result.err else nb


def _store(cache, path: str, nb, seconds: float) -> None:
    from jupyter_cache.base import CacheBundleIn

    cache.cache_notebook_bundle(CacheBundleIn(nb, path, data={"execution_seconds": seconds}), check_validity=False,
                                overwrite=True)


def execute_book(notebooks: list[Path], jobs: int, cache_path: Path = CACHE, after: dict = AFTER, log=print) -> int:
    """Execute ``notebooks`` ``jobs`` at a time, each after its prerequisites in ``after``, into the jupyter-cache
    at ``cache_path`` (emptied first). Returns 0, or 1 after the first failure (the others are stopped)."""
    from jupyter_cache import get_cache

    cache = get_cache(str(cache_path))
    cache.clear_cache()
    cache = get_cache(str(cache_path))
    needs = schedule(notebooks, after)
    by_name = {nb.stem: nb for nb in notebooks}
    settings = execution_settings()
    done: set[str] = set()
    running: dict = {}
    start = time.time()
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max(1, jobs), mp_context=context)
    try:
        while len(done) < len(notebooks):
            ready = [n for n in needs if n not in done and n not in running.values() and set(needs[n]) <= done]
            ready.sort(key=lambda n: -EXPECTED_SECONDS.get(n, 0) if jobs > 1 else list(needs).index(n))
            for name in ready[: max(0, jobs - len(running))]:
                log(f"[{time.time() - start:6.0f} s] executing {name}")
                running[pool.submit(_execute, str(by_name[name]), **settings)] = name
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                path, seconds, error, nb = future.result()
                if error is not None:
                    log(f"[{time.time() - start:6.0f} s] {name} FAILED after {seconds:.0f} s:\n{error}")
                    return 1
                _store(cache, path, nb, seconds)
                done.add(name)
                log(f"[{time.time() - start:6.0f} s] {name} executed in {seconds:.0f} s")
    finally:
        for process in list(getattr(pool, "_processes", {}).values()):  # a failure stops the chapters still running
            if running:
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
    log(f"[{time.time() - start:6.0f} s] {len(done)} chapters executed, {jobs} at a time")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3, help="chapters executed at once (default 3)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="the jupyter-cache Jupyter Book reads")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook of _toc.yml")
    args = parser.parse_args(argv)
    notebooks = [p.resolve() for p in args.notebooks] or book_notebooks()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    return execute_book(notebooks, args.jobs, args.cache)


if __name__ == "__main__":
    sys.exit(main())
