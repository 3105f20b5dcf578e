"""The one home of cached artifacts: where each lives, the key that names it, and how a finished one is written.

Every stage's artifact sits under ``$CLIPDEF_CACHE`` (:func:`clipdef.env.cache_dir`): models and their training
runs under ``models/``, optimised triggers under ``triggers/``. A name is the stage's kind and subject followed by a
key, a short hash of everything that determines the artifact (:func:`key`: the resolved settings and the package
version), so a changed setting is a new artifact and never a stale one. A training run writes its checkpoints and
history beside a *prefix*; it is done when ``<prefix>-final.safetensors`` exists (:func:`final_path`), which
:func:`save_final` writes last, atomically.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from clipdef.env import atomic_path, cache_dir, config_key, content_digest

MODELS, TRIGGERS = "models", "triggers"


def key(config: dict) -> str:
    """The cache key of an artifact: a short hash of ``config`` and the package version."""
    return config_key(config)


def artifact(folder: str, *name: str, key: str, suffix: str = "") -> Path:
    """``<cache>/<folder>/<name parts joined by '-'>-<key><suffix>``, e.g. ``models/clipdef-tiny-backdoor-sig-…``."""
    return cache_dir() / folder / f"{'-'.join(name)}-{key}{suffix}"


def run_prefix(*name: str, key: str) -> Path:
    """The path prefix of a training run under ``models/`` (checkpoints, history, the final model)."""
    return artifact(MODELS, *name, key=key)


def sidecar(prefix: str | Path, suffix: str) -> Path:
    """A file beside a run's prefix: ``.history.json``, ``.scores.npz``, ``-epoch2.safetensors`` …"""
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + suffix)


def final_path(prefix: str | Path) -> Path:
    """The finished model of a cached training run whose per-epoch checkpoints use the path prefix ``prefix``:
    ``<prefix>-final.safetensors`` (a cached stage is done when this file exists)."""
    return sidecar(prefix, "-final.safetensors")


def save_final(model: torch.nn.Module, path: str | Path, meta: dict | None = None) -> Path:
    """Write the finished model of a cached stage (:func:`clipdef.models.save_checkpoint`: atomic, with a SHA-256
    sidecar holding ``meta``) and return its path.

    Under a process group of world size > 1 every rank holds the same weights after
    :func:`clipdef.train.train_contrastive`; rank 0 alone writes them and every rank waits on a barrier, so that when
    this returns the file exists for all. Without one it is a plain save. Every rank must call it (the barrier is a
    collective)."""
    import torch.distributed as dist

    from clipdef.losses import rank_and_world_size
    from clipdef.models import save_checkpoint

    rank, world = rank_and_world_size()
    if rank == 0:
        path = save_checkpoint(model, path, meta=meta)
    else:
        path = Path(path).with_suffix(".safetensors")
    if world > 1:
        dist.barrier()
    return path


@contextmanager
def held(name: str):
    """An exclusive lock on ``<cache>/locks/<name>.lock`` while the block runs. Two processes that make the same
    artifact at once (chapters of a grid run side by side, ``parallel`` > 1) make it once: the second waits, then
    finds it cached. Under ``torchrun`` (a process group of several ranks) the ranks make an artifact together, so it
    runs unlocked there, as it does where ``fcntl`` is missing (Windows)."""
    from clipdef.losses import rank_and_world_size

    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on the book's platforms
        fcntl = None
    if fcntl is None or rank_and_world_size()[1] > 1:
        yield
        return
    path = cache_dir() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes, or when this process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def save_arrays(path: Path, **arrays) -> None:
    """NumPy arrays as one ``.npz``, written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {name: f[name] for name in f.files}


def save_json(path: Path, value) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value))


def load_json(path: Path):
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------------------------
# Fingerprints: what determines a trigger or a data set, for cache keys
# ---------------------------------------------------------------------------------------------------------------

def trigger_fingerprint(trigger) -> dict:
    """Everything that determines a trigger (its parameters, and a hash of any tensor such as BadCLIP's patch or of
    any network's weights, such as Input-Aware's generators), so that a cache key changes whenever the trigger
    does."""
    out = {}
    for k, v in vars(trigger).items():
        if isinstance(v, torch.Tensor):
            out[k] = content_digest(v)
        elif isinstance(v, torch.nn.Module):  # a trained network (BLTO's, Input-Aware's): its weights, not its repr
            out[k] = content_digest(*v.state_dict().values())
        elif k != "params":
            out[k] = v
    return {"name": trigger.name, **out}


def dataset_fingerprint(dataset) -> str:
    """A short hash of a pair data set's content (images or file references, and captions), for cache keys."""
    h = hashlib.sha256(str(len(dataset)).encode())
    images, refs = getattr(dataset, "images", None), getattr(dataset, "refs", None)
    if isinstance(images, torch.Tensor):
        h.update(images.detach().cpu().contiguous().numpy().tobytes())
        captions = list(dataset.captions)
    elif refs is not None:
        h.update(json.dumps([str(r) for r in refs]).encode())
        captions = list(dataset.captions)
    else:  # any dataset of (image, caption)
        captions = []
        for i in range(len(dataset)):
            image, caption = dataset[i]
            h.update(torch.as_tensor(image).contiguous().numpy().tobytes())
            captions.append(caption)
    h.update(json.dumps([str(c) for c in captions]).encode())
    return h.hexdigest()[:16]


def index_digest(indices) -> str:
    """A short hash of a set of sample indices (a filtered training set)."""
    return content_digest(np.asarray(indices, dtype=np.int64))
