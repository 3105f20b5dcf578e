"""Datasets the chapters train and evaluate on: the embedded world (cached) as torch datasets.

Images travel as float tensors in [0, 1], (3, H, W); captions as strings; labels as ints.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from clipdef import world
from clipdef.env import atomic_path, cache_dir, config_key


def to_float_images(images_uint8: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float().div_(255.0)


class PairDataset(Dataset):
    """Image–caption pairs, the shape of CC3M: ``ds[i] -> (image (3,H,W) float in [0,1], caption)``."""

    def __init__(self, images: torch.Tensor, captions: list[str]):
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        self.images, self.captions = images, list(captions)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i):
        return self.images[i], self.captions[i]


class LabelledDataset(Dataset):
    """Labelled images, the shape of ImageNet/CIFAR: ``ds[i] -> (image (3,H,W) float in [0,1], label)``."""

    def __init__(self, images: torch.Tensor, labels, class_names):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.class_names = images, torch.as_tensor(labels), tuple(class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def load_world(split: str, n: int, seed: int = 0, image_size: int = 32, progress: bool = True) -> world.WorldData:
    """A world split, generated once and cached (as .npz, written atomically) under its config key."""
    key = config_key({"world": split, "n": n, "seed": seed, "image_size": image_size})
    path = Path(cache_dir()) / "world" / f"{split}-{n}-{image_size}-{key}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            return world.WorldData(f["images"], f["captions"].tolist(), f["labels"], split, seed)
    data = world.make_split(split, n, seed=seed, image_size=image_size, progress=progress)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, images=data.images, captions=np.array(data.captions), labels=data.labels)
    return data


def world_pairs(cfg, split: str = "pretrain", n: int | None = None) -> PairDataset:
    """Caption pairs of the world for a profile (``pretrain`` or ``finetune``)."""
    n = n or {"pretrain": cfg.n_pretrain, "finetune": cfg.n_finetune}[split]
    data = load_world(split, n, seed=cfg.seed, image_size=cfg.image_size)
    return PairDataset(to_float_images(data.images), data.captions)


def world_classification(cfg, split: str = "eval", n: int | None = None) -> LabelledDataset:
    """The zero-shot classification set of the world (the ImageNet-val stand-in): one object per image."""
    data = load_world(split, n or cfg.n_eval, seed=cfg.seed, image_size=cfg.image_size)
    return LabelledDataset(to_float_images(data.images), data.labels, data.class_names)
