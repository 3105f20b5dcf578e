"""Explicit environment helpers: seeding, devices, the artifact cache and atomic writes.

Nothing here runs at import time; chapters call these functions in their set-up cell.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so a rerun with the same seed gives the same numbers on CPU."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(requested: str = "auto") -> str:
    """'auto' → 'cuda' when a GPU is visible, else 'cpu'. An explicit 'cuda' without a GPU is an error."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no GPU is visible; use device='auto' or 'cpu'.")
    return requested


def cache_dir() -> Path:
    """Where artifacts (world splits, checkpoints, embeddings) are cached: $CLIPDEF_CACHE or ~/.cache/clipdef."""
    root = Path(os.environ.get("CLIPDEF_CACHE", Path.home() / ".cache" / "clipdef"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def config_key(config: dict, length: int = 12) -> str:
    """A short, stable hash of a JSON-able config together with the package version (cache invalidation)."""
    from clipdef import __version__

    blob = json.dumps({"config": config, "clipdef": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def content_digest(*arrays, length: int = 16) -> str:
    """A short SHA-256 of the bytes of tensors or arrays (a trigger's pattern, a data set's images): the one
    fingerprint of content that cache keys and results rows use."""
    h = hashlib.sha256()
    for a in arrays:
        a = a.detach().cpu().contiguous().numpy() if hasattr(a, "detach") else np.ascontiguousarray(a)
        h.update(a.tobytes())
    return h.hexdigest()[:length]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_PENDING_WRITES: set[str] = set()  # temporary files of this process's atomic writes in progress


@contextmanager
def atomic_path(final: str | os.PathLike):
    """Yield a temporary path next to ``final``; on success it replaces ``final`` in one rename.

    A crash or an exception mid-write leaves the previous good file untouched (and no half-written one)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{final.name}", dir=final.parent)
    os.close(fd)
    _PENDING_WRITES.add(tmp)
    try:
        yield Path(tmp)
        # mkstemp makes 0600 files, and writers such as safetensors may recreate the file: set ordinary
        # permissions on whatever was written, just before it replaces the old artifact.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        _PENDING_WRITES.discard(tmp)


def end_with_parent() -> None:
    """Make this worker process end when the process that started it ends (Linux; elsewhere a no-op).

    A pool's worker otherwise outlives a killed chapter or grid and trains on, unseen. The parent's death arrives
    as SIGTERM; the worker then removes the temporary files of its unfinished :func:`atomic_path` writes and
    exits at once (an exception would not do: a pool worker catches it as the task's result and waits for the
    next task). Call it first in a pool's initializer."""
    import ctypes
    import multiprocessing
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    signal.signal(signal.SIGTERM, _remove_pending_writes_and_exit)
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # the parent died before the signal was armed
        _remove_pending_writes_and_exit(signal.SIGTERM, None)


def _remove_pending_writes_and_exit(signum, frame) -> None:
    for tmp in list(_PENDING_WRITES):
        try:
            os.unlink(tmp)
        except OSError:
            pass
    os._exit(128 + signum)


def progress_bar(iterable=None, enabled: bool = True, **kwargs):
    """``tqdm.auto`` for loops a reader waits for; off when ``enabled`` is False or in batch runs
    (``$CLIPDEF_HEADLESS`` or ``$TQDM_DISABLE`` set), where bars would only bloat logs and notebooks."""
    from tqdm.auto import tqdm

    headless = bool(os.environ.get("CLIPDEF_HEADLESS") or os.environ.get("TQDM_DISABLE"))
    return tqdm(iterable, disable=headless or not enabled, **kwargs)


def in_notebook_frontend() -> bool:
    """True inside a Jupyter kernel with a front end (widgets can render); False in plain Python or papermill."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell" and \
        not os.environ.get("PAPERMILL_EXECUTION") and not os.environ.get("CLIPDEF_HEADLESS")
