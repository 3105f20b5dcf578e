"""Datasets the chapters train and evaluate on: the embedded world (cached) as torch datasets.

Images travel as float tensors in [0, 1], (3, H, W); captions as strings; labels as ints.
"""

from __future__ import annotations

import functools
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
    """The first ``n`` samples of a world split, generated once and cached (as .npz, written atomically).

    Sample ``i`` of a split does not depend on how many are drawn, so a cached file of at least ``n`` samples
    serves any smaller ``n``, and a larger ``n`` only draws the samples that are missing."""
    key = config_key({"world": split, "seed": seed, "image_size": image_size, "revision": world.REVISION})
    folder = Path(cache_dir()) / "world"
    cached = sorted((int(p.stem.rsplit("-", 1)[1]), p) for p in folder.glob(f"{split}-{image_size}-{key}-*.npz"))
    for size, path in cached:
        if size >= n:
            return _read_world(path, split, seed).subset(range(n))
    if cached:
        size, path = cached[-1]
        have = _read_world(path, split, seed)
        rest = _generate(split, n - size, seed, image_size, progress, first=size)
        data = world.WorldData(np.concatenate([have.images, rest.images]), have.captions + rest.captions,
                               np.concatenate([have.labels, rest.labels]), split, seed)
    else:
        data = _generate(split, n, seed, image_size, progress)
    with atomic_path(folder / f"{split}-{image_size}-{key}-{n}.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, images=data.images, captions=np.array(data.captions), labels=data.labels)
    return data  # (smaller files stay: another process may be reading one right now)


def _read_world(path: Path, split: str, seed: int) -> world.WorldData:
    with np.load(path, allow_pickle=False) as f:
        return world.WorldData(f["images"], f["captions"].tolist(), f["labels"], split, seed)


def _generate(split: str, n: int, seed: int, image_size: int, progress: bool, first: int = 0) -> world.WorldData:
    """Draw samples; large draws use one process per core, except inside a worker process (no nested pools)."""
    import multiprocessing
    import os

    main = multiprocessing.parent_process() is None
    workers = (os.cpu_count() or 1) if main and n >= 4000 else 1
    return world.make_split(split, n, seed=seed, image_size=image_size, progress=progress, first=first,
                            workers=workers)


def world_pairs(cfg, split: str = "pretrain", n: int | None = None) -> PairDataset:
    """Caption pairs of the world for a profile (``pretrain`` or ``finetune``). The same pairs asked for again in
    this process are the same object: read-only by convention (views such as the poisoning ones never write)."""
    n = n or {"pretrain": cfg.n_pretrain, "finetune": cfg.n_finetune}[split]
    return _world_pairs(split, n, cfg.seed, cfg.image_size, str(cache_dir()))


@functools.lru_cache(maxsize=4)
def _world_pairs(split: str, n: int, seed: int, image_size: int, cache: str) -> PairDataset:
    data = load_world(split, n, seed=seed, image_size=image_size)
    return PairDataset(to_float_images(data.images), data.captions)


def world_classification(cfg, split: str = "eval", n: int | None = None) -> LabelledDataset:
    """The zero-shot classification set of the world (the ImageNet-val stand-in): one object per image."""
    data = load_world(split, n or cfg.n_eval, seed=cfg.seed, image_size=cfg.image_size)
    return LabelledDataset(to_float_images(data.images), data.labels, data.class_names)


# ---------------------------------------------------------------------------------------------------------------
# Real data (colab / paper profiles): CC3M-style CSV or webdataset shards, ImageNet-val folders, CIFAR-10 binaries
# ---------------------------------------------------------------------------------------------------------------

class TooManyBadImages(RuntimeError):
    """More unreadable images than the allowed fraction: the data set is probably broken, not just noisy."""


class _BadImageCounter:
    """Counts unreadable images; web-scale data always has a few, a broken download has many."""

    def __init__(self, total: int | None, max_bad_fraction: float, what: str):
        self.total, self.max_bad_fraction, self.what, self.bad = total, max_bad_fraction, what, []

    def record(self, name: str, err: Exception, checked: int) -> None:
        """Stops at the first unreadable image over the allowance: a broken download fails fast. (A total not
        known up front, None, is checked once at the end: :meth:`finish`.)"""
        self.bad.append((name, str(err)))
        if self.total is not None and len(self.bad) > self.max_bad_fraction * self.total:
            self._fail(checked)

    def finish(self, total: int) -> None:
        """The same allowance once the total is known (streamed data: the samples actually read)."""
        self.total = total
        if len(self.bad) > self.max_bad_fraction * total:
            self._fail(total)

    def _fail(self, checked: int):
        raise TooManyBadImages(
            f"{len(self.bad)} unreadable image(s) among the first {checked} of {self.total} in {self.what}, "
            f"more than the {self.max_bad_fraction:.0%} allowed; first: {self.bad[0][0]}: {self.bad[0][1]}. "
            "Check the download, or raise max_bad_fraction if a few broken files are expected.")


def _load_image(source, image_size: int) -> torch.Tensor:
    """Any PIL-readable image → (3, S, S) float in [0, 1]: shorter side resized to S (bicubic), centre crop."""
    from PIL import Image

    with Image.open(source) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = image_size / min(w, h)
        im = im.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - image_size) // 2, (h - image_size) // 2
        im = im.crop((left, top, left + image_size, top + image_size))
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


class FileImages(Dataset):
    """Lazily decoded images (real data sets do not fit in memory): ``ds[i] -> (image, target)`` where target is a
    caption (pairs) or a label. ``open_fn(ref)`` returns a path or a file-like object for a stored reference."""

    def __init__(self, refs: list, targets: list, image_size: int, open_fn=None, class_names=None):
        if len(refs) != len(targets):
            raise ValueError(f"{len(refs)} images but {len(targets)} captions/labels")
        self.refs, self.targets, self.image_size = list(refs), list(targets), image_size
        self.open_fn, self.class_names = open_fn, tuple(class_names) if class_names else None
        self.skipped: list[tuple[str, str]] = []

    @property
    def captions(self) -> list[str]:
        return [str(t) for t in self.targets]

    @property
    def labels(self) -> torch.Tensor:
        return torch.as_tensor(self.targets)

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i):
        ref = self.refs[i]
        return _load_image(self.open_fn(ref) if self.open_fn else ref, self.image_size), self.targets[i]


def _drop_unreadable(ds: FileImages, max_bad_fraction: float, what: str, progress: bool) -> FileImages:
    """Check every image once (PIL's ``verify``, cheap); unreadable ones are dropped and counted in ``.skipped``,
    and the data set fails only when more than ``max_bad_fraction`` are broken."""
    from PIL import Image

    from clipdef.env import progress_bar

    counter = _BadImageCounter(len(ds), max_bad_fraction, what)
    keep = []
    for i in progress_bar(range(len(ds)), enabled=progress, desc=f"check {what}"):
        ref = ds.refs[i]
        try:
            with Image.open(ds.open_fn(ref) if ds.open_fn else ref) as im:
                im.verify()
            keep.append(i)
        except Exception as err:  # PIL raises many types for broken files
            counter.record(str(ref), err, checked=i + 1)
    if not keep:
        raise ValueError(f"no readable image in {what}")
    out = FileImages([ds.refs[i] for i in keep], [ds.targets[i] for i in keep], ds.image_size, ds.open_fn,
                     ds.class_names)
    out.skipped = counter.bad
    return out


def csv_pairs(csv_path, image_size: int = 224, image_root=None, max_bad_fraction: float = 0.01,
              limit: int | None = None, check: bool = True, progress: bool = True) -> FileImages:
    """CC3M-style pairs from a CSV with columns ``filepath`` (or ``image``/``path``) and ``caption``.

    Relative paths are resolved against ``image_root`` (default: the CSV's folder). With ``check``, unreadable
    images are dropped and counted in ``.skipped``."""
    import pandas as pd

    csv_path = Path(csv_path)
    if not csv_path.exists():
        raise FileNotFoundError(f"{csv_path} does not exist; write a CSV with columns filepath,caption "
                                "(e.g. from img2dataset's output)")
    frame = pd.read_csv(csv_path, nrows=limit)
    path_col = next((c for c in ("filepath", "image", "path") if c in frame.columns), None)
    if path_col is None or "caption" not in frame.columns:
        raise ValueError(f"{csv_path} needs columns 'filepath' and 'caption'; it has {list(frame.columns)}")
    if len(frame) == 0:
        raise ValueError(f"{csv_path} has no rows")
    root = Path(image_root) if image_root else csv_path.parent
    paths = [Path(p) if Path(p).is_absolute() else root / p for p in frame[path_col].astype(str)]
    ds = FileImages(paths, frame["caption"].astype(str).tolist(), image_size)
    return _drop_unreadable(ds, max_bad_fraction, csv_path.name, progress) if check else ds


def webdataset_pairs(shards, image_size: int = 224, max_bad_fraction: float = 0.01, limit: int | None = None,
                     check: bool = True, progress: bool = True, shuffle_buffer: int | None = None):
    """Pairs from webdataset tar shards as img2dataset writes them (``000000000.jpg`` + ``.txt`` per sample),
    streamed: a :class:`clipdef.shards.ShardPairs` of the first ``limit`` readable, captioned samples (all when
    None), with captions known up front and images decoded while streaming (``train_contrastive`` and
    ``encode_images`` stream it; ``ds[i]`` reads one sample). ``shards``: a folder, a list of paths, a glob, or a
    brace pattern like ``cc3m/{00000..00099}.tar``. With ``check`` every image is decoded once while indexing;
    unreadable ones are skipped and listed in ``.skipped``, more than ``max_bad_fraction`` of them raises
    :class:`TooManyBadImages`. The index (keys and captions) is cached on disk. ``shuffle_buffer``: undecoded samples
    each DataLoader worker holds to shuffle (default :data:`clipdef.shards.SHUFFLE_BUFFER`)."""
    from clipdef import shards as shard_data

    index = shard_data.index_shards(shards, limit=limit, check=check, max_bad_fraction=max_bad_fraction,
                                    progress=progress)
    return shard_data.ShardPairs(index, image_size, shuffle_buffer=shuffle_buffer or shard_data.SHUFFLE_BUFFER)


def image_folder(root, image_size: int = 224, class_names_file=None, max_bad_fraction: float = 0.01,
                 limit_per_class: int | None = None, check: bool = True, progress: bool = True) -> FileImages:
    """ImageNet-val style: one sub-folder per class (sorted = class index); readable names from a file (one per
    line, in folder order), else the folder names."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; arrange images as <root>/<class>/<image>")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-folders")
    names = classes
    if class_names_file:
        names = [line.strip() for line in Path(class_names_file).read_text().splitlines() if line.strip()]
        if len(names) != len(classes):
            raise ValueError(f"{class_names_file} lists {len(names)} names but {root} has {len(classes)} folders")
    files, labels = [], []
    for c, folder in enumerate(classes):
        found = sorted(p for p in (root / folder).iterdir() if p.is_file())[:limit_per_class]
        files += found
        labels += [c] * len(found)
    ds = FileImages(files, labels, image_size, class_names=names)
    return _drop_unreadable(ds, max_bad_fraction, root.name, progress) if check else ds


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar10_binary(folder, split: str = "test") -> LabelledDataset:
    """CIFAR-10 from its binary version (``data_batch_{1..5}.bin`` / ``test_batch.bin``: 1 label byte + 3,072
    pixel bytes per record) — no pickle involved."""
    folder = Path(folder)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}; download and unpack cifar-10-binary.tar.gz there")
    records = []
    for n in names:
        raw = np.frombuffer((folder / n).read_bytes(), dtype=np.uint8)
        if raw.size % 3073:
            raise ValueError(f"{folder / n} is truncated: {raw.size} bytes is not a multiple of 3,073")
        records.append(raw.reshape(-1, 3073))
    rows = np.concatenate(records)
    images = torch.from_numpy(rows[:, 1:].reshape(-1, 3, 32, 32).copy()).float().div_(255.0)
    return LabelledDataset(images, rows[:, 0].astype(np.int64), CIFAR10_CLASSES)


# ---------------------------------------------------------------------------------------------------------------
# What a profile trains and evaluates on
# ---------------------------------------------------------------------------------------------------------------

def finetune_pairs(cfg, progress: bool = True):
    """The fine-tuning pairs of a profile: world pairs (tiny), or CC3M-style CSV / webdataset shards (real; the
    first ``n_finetune`` readable pairs of the shards, streamed: :class:`clipdef.shards.ShardPairs`)."""
    if cfg.data == "world":
        return world_pairs(cfg, "finetune")
    if cfg.finetune_shards:
        pool = _profile_shards(cfg, progress)
        return pool.subset(range(min(cfg.n_finetune, len(pool))))
    return csv_pairs(cfg.data_path(cfg.finetune_csv), cfg.image_size, limit=cfg.n_finetune, progress=progress)


def defense_pairs(cfg, progress: bool = True):
    """The clean pairs a fine-tuning defense may use (chapter 4): the ``n_defense`` pairs that follow the
    ``n_finetune`` fine-tuning pairs of the same source, so the attacker (who poisons the first ``n_finetune``)
    never touched them. The world's fine-tuning split drawn with ``n_finetune + n_defense`` pairs, the next rows
    of the profile's CSV (unreadable images among them dropped, as in :func:`finetune_pairs`), or the next readable
    samples of its webdataset shards (one index serves both: :func:`_profile_shards`)."""
    total = cfg.n_finetune + cfg.n_defense
    if cfg.data == "world":
        pool = world_pairs(cfg, "finetune", n=total)
        return PairDataset(pool.images[cfg.n_finetune:], pool.captions[cfg.n_finetune:])
    if cfg.finetune_shards:
        pool = _profile_shards(cfg, progress)
    else:
        pool = csv_pairs(cfg.data_path(cfg.finetune_csv), cfg.image_size, limit=total, check=False)
    if len(pool) <= cfg.n_finetune:
        raise ValueError(f"the fine-tuning data has {len(pool)} pairs, none left for the defense after the "
                         f"{cfg.n_finetune} fine-tuning pairs; add data or lower n_finetune")
    if cfg.finetune_shards:
        return pool.subset(range(cfg.n_finetune, len(pool)))
    tail = FileImages(pool.refs[cfg.n_finetune:], pool.targets[cfg.n_finetune:], pool.image_size, pool.open_fn)
    return _drop_unreadable(tail, 0.01, "defense pairs", progress)


def _profile_shards(cfg, progress: bool = True):
    """The first ``n_finetune + n_defense`` readable pairs of the profile's shards: one index (cached on disk) for
    the attacker's fine-tuning pairs and the defender's pairs after them."""
    return webdataset_pairs(cfg.data_path(cfg.finetune_shards), cfg.image_size,
                            limit=cfg.n_finetune + cfg.n_defense, progress=progress)


def subset(dataset, ids):
    """``dataset`` restricted to ``ids`` (renumbered 0..len-1): a streamed set stays streamed, with its captions
    (:class:`clipdef.shards.StreamSubset`); anything else becomes a torch ``Subset``."""
    from torch.utils.data import Subset

    from clipdef import shards as shard_data

    stream = shard_data.as_stream(dataset)
    return Subset(dataset, list(ids)) if stream is None else shard_data.StreamSubset(stream, ids)


def eval_set(cfg, progress: bool = True):
    """The zero-shot evaluation set of a profile: the world's eval split, or an ImageNet-val style folder (class
    names from ``class_names_file``, else open_clip's ImageNet names when there are 1,000 folders)."""
    if cfg.data == "world":
        return world_classification(cfg)
    root = cfg.data_path(cfg.eval_folder)
    names_file = cfg.data_path(cfg.class_names_file)
    if names_file is not None and not names_file.exists():
        names_file = None
    ds = image_folder(root, cfg.image_size, names_file, progress=progress)
    if names_file is None and len(ds.class_names) == 1000:
        import open_clip

        ds.class_names = tuple(open_clip.IMAGENET_CLASSNAMES)
    return ds
