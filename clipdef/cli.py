"""``python -m clipdef``: run chapters with parameters, run grids of them, aggregate their results, and write the
student version of the chapters (solutions replaced by placeholders, see clipdef.student).

    python -m clipdef run notebooks/00_world_and_clip.ipynb -p profile tiny -p seed 1
    python -m clipdef grid grids/report.yaml --parallel 2
    python -m clipdef report runs/grid/results
    python -m clipdef list
    python -m clipdef student notebooks/ --out student/
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

REPO_NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


class CommandError(ValueError):
    """A user error on the command line: ``main`` prints its message and exits with status 2."""


class ChapterFailed(CommandError):
    """A chapter raised an error while it ran: its own message, and the cell it came from."""

    def __init__(self, notebook: Path, error):
        cells = json.loads(Path(notebook).read_text())["cells"]
        parameters = next((i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])),
                          len(cells))
        # papermill inserts its injected-parameters cell after the parameters cell: count the chapter's own cells
        index = error.cell_index - (error.cell_index > parameters)
        self.notebook, self.cell, self.ename, self.evalue = notebook, index + 1, error.ename, error.evalue
        source = [line for line in str(error.source).splitlines() if line.strip()]
        where = f"cell {index + 1} of {len(cells)}" + (f" ({source[0].strip()[:70]} …)" if source else "")
        super().__init__(f"{notebook.name} stopped in {where}:\n  {error.ename}: {error.evalue}")


def parse_value(text: str):
    """Command-line text → int, float, bool, None or str (as a reader would expect for ``-p seed 1``)."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def notebook_parameters(notebook: str | Path) -> dict:
    """The parameters a notebook declares in its cell tagged ``parameters`` (name → default as written)."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    if not declared:
        raise ValueError(f"{notebook} has no cell tagged 'parameters'; it cannot be run with parameters")
    return {name: info["default"] for name, info in declared.items()}


def validate_parameters(notebook: str | Path, params: dict) -> None:
    """What can be checked before a kernel starts: unknown parameters and profiles (with the lists of valid ones),
    values of another type than the parameter's default, and the profile the chapter will resolve (its fields'
    ranges) — each a :class:`CommandError`."""
    import ast

    from clipdef import profiles

    declared = notebook_parameters(notebook)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise CommandError(f"unknown parameter(s) {unknown} for {Path(notebook).name}; "
                           f"valid parameters: {', '.join(sorted(declared))}")
    for name, value in params.items():
        try:
            default = ast.literal_eval(declared[name])
        except (ValueError, SyntaxError):
            continue  # a default that is an expression: nothing to compare with
        if not _same_kind(default, value):
            raise CommandError(f"parameter {name} of {Path(notebook).name} takes {type(default).__name__} values "
                               f"(default {declared[name]}), got {value!r}")
    name = str(params.get("profile") or "tiny")
    if profiles.is_profile_file(name) and not Path(name).expanduser().exists():
        raise CommandError(f"profile file {name} does not exist")
    if not profiles.is_profile_file(name) and name not in profiles.names():
        raise CommandError(f"unknown profile {name!r}; valid profiles: {', '.join(profiles.names())}, or the path "
                           "of a YAML file (base: paper, then fields to change)")
    fields = {k: v for k, v in params.items() if k in profiles.parameter_names() and k != "profile"}
    try:
        profiles.resolve(name, **fields)
    except (OSError, ValueError, TypeError) as err:
        raise CommandError(f"{err}" if not profiles.is_profile_file(name) else f"profile file {name}: {err}") \
            from None


def _same_kind(default, value) -> bool:
    """Does a command-line value fit a parameter whose default is ``default``? (None and text defaults take
    anything a chapter can parse; numbers take numbers, an int no fraction.)"""
    if default is None or value is None or isinstance(default, str):
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return True


def output_name(notebook: str | Path, params: dict) -> str:
    """``<stem>__<hash of the parameters>.ipynb``: one output per distinct parameter set."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return f"{Path(notebook).stem}__{digest}.ipynb"


def run_notebook(notebook: str | Path, params: dict, out_dir: str | Path = "runs/out",
                 timeout: int | None = None, progress: bool = True) -> Path:
    """Execute a notebook with papermill into ``out_dir``; the output appears only once execution succeeded."""
    import papermill

    from clipdef import profiles
    from clipdef.env import atomic_path

    notebook = Path(notebook)
    if not notebook.exists():
        raise CommandError(f"notebook {notebook} does not exist; chapters: {', '.join(chapter_names())}")
    validate_parameters(notebook, params)
    if "profile" in params and profiles.is_profile_file(str(params["profile"])):
        # the notebook runs in its own folder: give it the profile file's absolute path
        params = {**params, "profile": str(Path(params["profile"]).expanduser().resolve())}
    out = Path(out_dir) / output_name(notebook, params)
    with atomic_path(out) as tmp:
        try:
            papermill.execute_notebook(str(notebook), str(tmp), parameters=params, cwd=str(notebook.parent),
                                       progress_bar=progress, execution_timeout=timeout, kernel_name="python3",
                                       request_save_on_cell_execute=False, log_output=False)
        except papermill.PapermillExecutionError as err:
            raise ChapterFailed(notebook, err) from None
    return out


# ---------------------------------------------------------------------------------------------------------------
# Grids: the product of parameter lists, run as independent notebook runs that can be killed and resumed
# ---------------------------------------------------------------------------------------------------------------

def expand_grid(spec: dict) -> list[tuple[Path, dict]]:
    """(notebook, parameters) for every cell of the product in a grid spec::

        notebooks:                                          # or notebook: one path
          - notebooks/02_attacks.ipynb
          - {notebook: notebooks/05_cgd.ipynb, parameters: {supervised_attacks: "badnet,lc"}}
        grid: {profile: [tiny], seed: [0, 1, 2]}            # lists → their product
        fixed: {device: cpu}                                # the same for every run

    A notebook given as a mapping adds its own ``parameters`` (they override ``fixed``; the grid overrides both) and
    may replace lists of the grid for itself (``grid: {seed: [0, 1, 2, 3, 4]}``: more seeds where a verdict needs
    them).
    """
    import itertools

    entries = spec.get("notebooks") or ([spec["notebook"]] if "notebook" in spec else [])
    if not entries:
        raise CommandError("a grid spec needs 'notebook' or 'notebooks'")
    grid, fixed = spec.get("grid", {}), spec.get("fixed", {})
    unknown_keys = set(spec) - {"notebook", "notebooks", "grid", "fixed", "out", "parallel"}
    if unknown_keys:
        raise CommandError(f"unknown grid spec keys {sorted(unknown_keys)}; valid: notebook(s), grid, fixed, out, "
                           "parallel")
    _check_grid(grid)
    runs = []
    for entry in entries:
        if isinstance(entry, dict):
            if set(entry) - {"notebook", "parameters", "grid"} or "notebook" not in entry:
                raise CommandError(f"a notebook entry is a path or {{notebook: PATH, parameters: {{...}}, grid: "
                                   f"{{...}}}}, got {entry!r}")
            nb, own, own_grid = entry["notebook"], entry.get("parameters") or {}, entry.get("grid") or {}
        else:
            nb, own, own_grid = entry, {}, {}
        here = {**grid, **_check_grid(own_grid)}
        for combo in itertools.product(*here.values()):
            params = {**fixed, **own, **dict(zip(here, combo))}
            validate_parameters(nb, params)
            runs.append((Path(nb), params))
    return runs


def _check_grid(grid: dict) -> dict:
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise CommandError(f"grid entry {key!r} must be a non-empty list, got {values!r}")
    return grid


def run_grid(spec_path: str | Path, out: str | Path | None = None, parallel: int | None = None,
             timeout: int | None = None) -> dict:
    """Run every cell of a grid once: finished cells (their output notebook exists) are skipped, so a killed grid
    resumes where it stopped; each run writes its notebook and results atomically. Returns counts."""
    import os
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor, as_completed

    import yaml

    from clipdef.env import progress_bar

    spec = yaml.safe_load(Path(spec_path).read_text())
    # absolute: each run executes in its notebook's folder, where a relative results path would land elsewhere
    out = Path(out or spec.get("out", "runs/grid")).resolve()
    parallel = int(parallel or spec.get("parallel", 1))
    runs = expand_grid(spec)
    todo = [(nb, p) for nb, p in runs if not (out / "notebooks" / output_name(nb, p)).exists()]
    print(f"grid: {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to do "
          f"({parallel} in parallel) → {out}")

    manifest = GridManifest(out / "manifest.json", spec)

    def one(nb: Path, params: dict) -> tuple[str, int, str]:
        run_id = output_name(nb, params)[: -len(".ipynb")]
        env = {**os.environ, "CLIPDEF_RUN_ID": run_id, "CLIPDEF_RESULTS": str(out / "results"),
               "CLIPDEF_HEADLESS": "1"}
        cmd = [sys.executable, "-m", "clipdef", "run", str(nb), "--out", str(out / "notebooks")]
        cmd += [a for k, v in params.items() for a in ("-p", k, str(v))]
        if timeout:
            cmd += ["--timeout", str(timeout)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        manifest.record(run_id, nb, params, "finished" if proc.returncode == 0 else "failed",
                        time.perf_counter() - start)
        return run_id, proc.returncode, proc.stderr[-2000:]

    failed = []
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(one, nb, p) for nb, p in todo]
        for fut in progress_bar(as_completed(futures), total=len(futures), desc="grid"):
            run_id, code, err = fut.result()
            if code != 0:
                failed.append(run_id)
                print(f"FAILED {run_id}:\n{err}")
    summary = {"total": len(runs), "skipped": len(runs) - len(todo), "ran": len(todo) - len(failed),
               "failed": len(failed)}
    print("grid summary: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    return summary


class GridManifest:
    """``manifest.json`` beside a grid's results: the spec, where and with which code each run was made, its
    status and duration. Rewritten atomically after every run, and kept across resumes, so a published results
    folder says exactly what produced it."""

    def __init__(self, path: Path, spec: dict):
        import threading

        self.path, self.lock = path, threading.Lock()
        old = json.loads(path.read_text()) if path.exists() else {}
        self.data = {"spec": spec, "runs": old.get("runs", {})}

    def record(self, run_id: str, notebook: Path, params: dict, status: str, seconds: float) -> None:
        import datetime

        from clipdef import profiles
        from clipdef.env import atomic_path

        threads = _run_threads(params, profiles)
        with self.lock:
            self.data["runs"][run_id] = {"notebook": str(notebook), "parameters": params, "status": status,
                                         "seconds": round(seconds, 1), "threads": threads, **provenance(),
                                         "finished_at": datetime.datetime.now().isoformat(timespec="seconds")}
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True, default=str))


def _run_threads(params: dict, profiles) -> int | str:
    """The intra-op threads a run used: its profile's ``threads`` (0 means every core of the machine)."""
    import os

    try:
        fields = {k: v for k, v in params.items() if k in profiles.parameter_names() and k != "profile"}
        threads = profiles.resolve(params.get("profile"), **fields).threads
    except (OSError, ValueError, TypeError):
        return "unknown"
    return threads or f"all ({os.cpu_count()})"


def provenance() -> dict:
    """What made a result: the clipdef version, the git commit of this checkout (and whether it had uncommitted
    changes), the machine, its CPU and the PyTorch build (a CPU run's last bits depend on both)."""
    import os
    import platform
    import subprocess

    from clipdef import __version__

    def git(*args) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO_NOTEBOOKS.parent, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"clipdef": __version__, "commit": git("rev-parse", "HEAD"),
            "uncommitted_changes": None if status is None else bool(status),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}", **cpu_description()}


def cpu_description() -> dict:
    """The CPU's model and vector extensions (which kernels PyTorch picks) and the PyTorch version."""
    import torch

    model, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    vector = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return {"cpu": model, "cpu_vector": ", ".join(vector) or "none found", "torch": torch.__version__}


def chapter_names() -> list[str]:
    return sorted(p.name for p in REPO_NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clipdef", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute a chapter notebook with parameters (papermill)")
    run.add_argument("notebook")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    run.add_argument("--out", default="runs/out", help="folder for the executed notebook (default runs/out)")
    run.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    grid = sub.add_parser("grid", help="run the product of parameter lists from a YAML spec (resumable)")
    grid.add_argument("spec")
    grid.add_argument("--out", default=None, help="output folder (default: the spec's 'out' or runs/grid)")
    grid.add_argument("--parallel", type=int, default=None, help="runs at once (default: the spec's or 1)")
    grid.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    rep = sub.add_parser("report", help="aggregate results rows: mean ± 95%% CI over seeds")
    rep.add_argument("results", nargs="?", default=None, help="a results file or folder (default: the cache's)")
    rep.add_argument("--out", default=None, help="write summary.csv and summary.md here")
    sub.add_parser("list", help="list chapters, profiles and each chapter's parameters")
    stu = sub.add_parser("student", help="write student versions: solution cells replaced by placeholders")
    stu.add_argument("notebooks", nargs="*", metavar="NOTEBOOK_OR_DIR", help="default: every chapter")
    stu.add_argument("--out", default="student", help="folder for the student notebooks (default student/)")
    args = parser.parse_args(argv)
    try:
        return _command(args)
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _command(args) -> int:
    if args.command == "grid":
        summary = run_grid(args.spec, args.out, args.parallel, args.timeout)
        return 1 if summary["failed"] else 0
    if args.command == "report":
        return report_command(args.results, args.out)
    if args.command == "student":
        return student_command(args.notebooks or [REPO_NOTEBOOKS], args.out)

    if args.command == "list":
        from clipdef import profiles

        print("profiles:", ", ".join(f"{p.name} ({p.description})" for p in profiles.PROFILES.values()))
        for name in chapter_names():
            print(f"{name}: {', '.join(notebook_parameters(REPO_NOTEBOOKS / name))}")
        return 0
    params = {name: parse_value(value) for name, value in args.parameter}
    out = run_notebook(args.notebook, params, args.out, args.timeout)
    print(f"wrote {out}")
    return 0


def report_command(results_path, out) -> int:
    from clipdef import labels, report, results

    frame = results.load(results_path or results.results_dir())
    if frame.empty:
        raise CommandError(f"no results rows under {results_path or results.results_dir()}; run chapters or a grid "
                           "first")
    summary = report.summarise(frame)
    summary["unit"] = [labels.unit(m) for m in summary["metric"]]
    summary["mean ± 95% CI"] = [report.format_mean_ci(m, c, u) + (" %" if u == labels.SHARE else "")
                                for m, c, u in zip(summary["mean"], summary["ci95"], summary["unit"])]
    table = summary.drop(columns=["mean", "std", "ci95"]).to_markdown(index=False)
    print(table)
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        summary.to_csv(out / "summary.csv", index=False)
        (out / "summary.md").write_text(table + "\n")
        print(f"wrote {out / 'summary.csv'} and {out / 'summary.md'}")
    return 0


def student_command(paths, out) -> int:
    from clipdef import student

    try:
        written = student.write_student_versions(paths, out)
    except (FileNotFoundError, ValueError) as err:  # ExerciseMismatch is a ValueError
        raise CommandError(str(err)) from None
    print(f"wrote {len(written)} student notebook(s) to {out}: {', '.join(p.name for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
