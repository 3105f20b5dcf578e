"""Environment helpers: a pool worker ends with the process that started it, and cleans up its atomic write."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

# The parent: a pool of one worker (initializer end_with_parent, as the chapters' pools) that starts an atomic write
# and sleeps inside it; the parent prints the worker's pid once the temporary file exists, then waits.
PARENT = textwrap.dedent("""
    import multiprocessing, os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from pathlib import Path

    def slow_write(target):
        from clipdef.env import atomic_path
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            time.sleep(120)
            tmp.write_text("whole")
        return os.getpid()

    if __name__ == "__main__":
        from clipdef.env import end_with_parent
        target = Path(sys.argv[1])
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=end_with_parent) as pool:
            pool.submit(slow_write, target)
            while not list(target.parent.glob(".tmp-*")):
                time.sleep(0.05)
            print([p.pid for p in multiprocessing.active_children() if p.pid != os.getpid()][0], flush=True)
            time.sleep(120)
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has ended; only its parent has not reaped it yet
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux-only")
def test_a_killed_parent_takes_its_pool_worker_with_it(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    target = tmp_path / "out" / "artifact.txt"
    target.parent.mkdir()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout's clipdef, not another
    parent = subprocess.Popen([sys.executable, str(script), str(target)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": repo})
    try:
        worker = int(parent.stdout.readline())
        assert alive(worker)
        parent.send_signal(signal.SIGKILL)  # as a killed grid or chapter: no chance to shut the pool down
        parent.wait()
        deadline = time.monotonic() + 30
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(worker), "the pool worker outlived its killed parent"
        assert not target.exists()  # the half-written artifact never replaced anything …
        assert not list(target.parent.glob(".tmp-*"))  # … and its temporary file was removed
    finally:
        parent.kill()
