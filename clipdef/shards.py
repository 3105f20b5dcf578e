"""Image–caption pairs streamed from webdataset tar shards, the way img2dataset writes CC3M: ``00000.tar`` holding
``000000000.jpg``, ``000000000.txt`` and ``000000000.json`` per sample, beside ``00000_stats.json`` and a parquet.

* :class:`ShardIndex` — which samples make the data set, in order: each shard's keys and captions, read in one
  streaming pass (webdataset's tar reader) that checks every image and stops after ``limit`` readable pairs. It
  holds no image bytes, and is cached on disk (keyed by the shards' paths, sizes and times), so every later
  process — each chapter, each torchrun rank — starts in a moment.
* :class:`ShardPairs` — a view of the index: ``len``, ``captions``, ids ``0..len-1`` (the position in the index:
  shard order, then order in the shard) that are the same on every pass, and passes over the images in batches
  (:meth:`ShardPairs.batches`) that stream the shards. ``ds[i]`` reads one sample by its offset in the tar, for the
  few samples a chapter shows.
* :func:`stream_batches` — one pass in batches for one rank, planned from the index alone: the epoch's shards in a
  seeded order, this rank's and this DataLoader worker's contiguous share of it, a bounded seeded shuffle buffer
  of undecoded samples, decoding in the worker. Every rank gets the same number of batches (DDP waits for all).

Views that change samples (poisoning, :class:`clipdef.poison.PoisonedPairs`) and subsets (:class:`StreamSubset`)
stream through the same code: each gives ``stream_parts()`` — the ShardPairs it reads, which of its samples (in the
view's order) and a function applied to each decoded ``(image, caption, id)`` (None: unchanged).
"""

from __future__ import annotations

import functools
import glob
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, Subset, get_worker_info

from clipdef.data import _BadImageCounter, _load_image

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # the first present is a sample's image (img2dataset writes one)
SHUFFLE_BUFFER = 1000                          # undecoded samples held per DataLoader worker while shuffling
OFFSET_TABLES = 32                             # shards whose member offsets random access keeps (a few MB)


# ---------------------------------------------------------------------------------------------------------------
# Finding the shards
# ---------------------------------------------------------------------------------------------------------------

def shard_paths(shards) -> list[Path]:
    """The shard files of ``shards``: a list of paths, a folder (its ``*.tar``, sorted), a brace pattern
    (``cc3m/{00000..00331}.tar``), a glob (``cc3m/*.tar``) or one file."""
    if isinstance(shards, (list, tuple)):
        if not shards:
            raise ValueError("no webdataset shards given: pass a folder, a pattern or a list of .tar files")
        return _existing([Path(s) for s in shards], f"the {len(shards)} shard(s) given")
    text = str(shards)
    if Path(text).is_dir():
        found = sorted(Path(text).glob("*.tar"))
        if not found:
            raise FileNotFoundError(f"webdataset shards not found: {text} holds no .tar file; point at "
                                    "img2dataset's output folder (00000.tar, 00001.tar, ...)")
        return found
    if "{" in text:
        from braceexpand import braceexpand

        return _existing([Path(p) for p in braceexpand(text)], text)
    if any(c in text for c in "*?["):
        found = sorted(Path(p) for p in glob.glob(text))
        if not found:
            raise FileNotFoundError(f"webdataset shards not found: nothing matches {text}")
        return found
    return _existing([Path(text)], text)


def _existing(paths: list[Path], what: str) -> list[Path]:
    missing = [p for p in paths if not p.is_file()]
    if len(missing) == len(paths):
        raise FileNotFoundError(f"webdataset shards not found: no file of {what} exists (the first: {paths[0]}); "
                                "check the folder and the range (img2dataset names them 00000.tar, 00001.tar, ...)")
    if missing:
        raise FileNotFoundError(f"webdataset shards not found: {len(missing)} of the {len(paths)} shards of {what} "
                                f"are missing, e.g. {', '.join(str(m) for m in missing[:3])}; narrow the range to the "
                                "shards you have, or finish the download")
    return paths


def shard_samples(path: Path):
    """The samples of one shard in tar order, grouped by webdataset: ``{"__key__": ..., "jpg": bytes, ...}``."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    with open(path, "rb") as stream:
        try:
            yield from group_by_keys(tar_file_expander([{"url": str(path), "stream": stream}]))
        except (tarfile.TarError, OSError, ValueError) as err:
            why = err.args[0] if err.args else type(err).__name__
            raise ValueError(f"{path} is not a readable tar shard ({why}); download it again, or leave it out of "
                             "the shards") from err


def _image_bytes(sample: dict) -> bytes | None:
    return next((sample[e] for e in IMAGE_EXTS if e in sample), None)


def _caption(sample: dict) -> str | None:
    """The ``.txt`` member, else the ``caption`` field of the ``.json`` one (both written by img2dataset)."""
    if "txt" in sample:
        text = sample["txt"].decode("utf-8").strip()
    elif "json" in sample:
        text = str(json.loads(sample["json"]).get("caption") or "").strip()
    else:
        return None
    return text or None


def _check_image(raw: bytes) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as im:
        im.draft("RGB", (1, 1))  # JPEGs decode at 1/8 scale: a real decode (a truncated file fails), cheaply
        im.load()


# ---------------------------------------------------------------------------------------------------------------
# The index: keys and captions, in order
# ---------------------------------------------------------------------------------------------------------------

@dataclass(eq=False)  # hashed by identity: random access caches offset tables per index
class ShardIndex:
    """The samples of a shard data set, in order: row ``r`` is ``keys[r]`` with ``captions[r]``, in shard ``s``
    when ``bounds[s] <= r < bounds[s + 1]``. Unreadable images are left out and listed in ``skipped``."""

    shards: tuple[str, ...]
    bounds: np.ndarray
    keys: list[str]
    captions: list[str]
    skipped: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.keys)

    def shard_of(self, rows) -> np.ndarray:
        return np.searchsorted(self.bounds, rows, side="right") - 1

    def as_json(self) -> dict:
        return {"shards": list(self.shards), "bounds": self.bounds.tolist(), "keys": self.keys,
                "captions": self.captions, "skipped": self.skipped}

    @classmethod
    def from_json(cls, d: dict) -> "ShardIndex":
        return cls(tuple(d["shards"]), np.asarray(d["bounds"], dtype=np.int64), d["keys"], d["captions"],
                   [tuple(s) for s in d["skipped"]])


def index_shards(shards, limit: int | None = None, check: bool = True, max_bad_fraction: float = 0.01,
                 progress: bool = True) -> ShardIndex:
    """The index of the first ``limit`` readable, captioned samples of ``shards`` (all when None), read once and
    cached on disk; ``check`` decodes every image on the way (unreadable ones are skipped and counted; more than
    ``max_bad_fraction`` of them raises :class:`clipdef.data.TooManyBadImages` at once)."""
    from clipdef.env import cache_dir

    paths = shard_paths(shards)
    stamp = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    return _cached_index(stamp, limit, check, max_bad_fraction, progress, str(cache_dir()))


@functools.lru_cache(maxsize=4)
def _cached_index(stamp: tuple, limit, check: bool, max_bad_fraction: float, progress: bool,
                  cache: str) -> ShardIndex:
    from clipdef.env import atomic_path, config_key

    key = config_key({"shards": stamp, "limit": limit, "check": check, "max_bad_fraction": max_bad_fraction})
    path = Path(cache) / "shards" / f"index-{key}.json"
    if path.exists():
        with open(path) as fh:
            return ShardIndex.from_json(json.load(fh))
    index = _build_index([Path(p) for p, _, _ in stamp], limit, check, max_bad_fraction, progress)
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(index.as_json(), fh)  # written piece by piece: no second copy of the captions in memory
    return index


def _build_index(paths: list[Path], limit, check: bool, max_bad_fraction: float, progress: bool) -> ShardIndex:
    from clipdef.env import progress_bar

    known = [n for n in (limit, _stats_successes(paths)) if n]
    # fail fast against the expected total (the limit, or img2dataset's stats); with neither, check at the end
    bad = _BadImageCounter(min(known) if known else None, max_bad_fraction, "webdataset shards")
    keys, captions, bounds, used = [], [], [0], []
    for path in progress_bar(paths, enabled=progress, desc="index shards"):
        used.append(str(path.resolve()))
        _index_shard(path, keys, captions, bad, check, limit)
        bounds.append(len(keys))
        if limit and len(keys) >= limit:
            break
    if not keys:
        raise ValueError(f"no readable (image, caption) sample in {len(paths)} shard(s) (the first: {paths[0]})")
    bad.finish(len(keys) + len(bad.bad))
    return ShardIndex(tuple(used), np.asarray(bounds, dtype=np.int64), keys, captions, bad.bad)


def _index_shard(path: Path, keys: list, captions: list, bad: _BadImageCounter, check: bool, limit) -> None:
    """Append the readable, captioned samples of one shard to ``keys`` and ``captions`` (up to ``limit``)."""
    images = captioned = 0
    for sample in shard_samples(path):
        image = _image_bytes(sample)
        if image is None:
            continue
        images += 1
        caption = _caption(sample)
        if caption is None:
            continue
        captioned += 1
        if check:
            try:
                _check_image(image)
            except Exception as err:  # PIL raises many types for broken files
                bad.record(f"{path.name}:{sample['__key__']}", err, checked=len(keys) + len(bad.bad) + 1)
                continue
        keys.append(sample["__key__"])
        captions.append(caption)
        if limit and len(keys) >= limit:
            return
    if images and not captioned:
        raise ValueError(f"{path} has {images} images but no captions: each sample needs a .txt member, or a "
                         "'caption' field in its .json (img2dataset writes both when given caption_col=...)")


def _stats_successes(paths: list[Path]) -> int | None:
    """The samples img2dataset wrote, from its ``<shard>_stats.json`` files (None unless every shard has one)."""
    total = 0
    for p in paths:
        stats = p.with_name(f"{p.stem}_stats.json")
        try:
            total += int(json.loads(stats.read_text())["successes"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return total


# ---------------------------------------------------------------------------------------------------------------
# The pairs
# ---------------------------------------------------------------------------------------------------------------

class ShardPairs(IterableDataset):
    """Image–caption pairs of webdataset shards: ids ``0..len-1`` are positions in the :class:`ShardIndex` rows
    ``rows``; captions and keys are known up front, images are decoded while streaming (:meth:`batches`).

    Iterating gives ``(image, caption, id)`` in id order (DataLoader workers each a contiguous block); ``ds[i]``
    gives ``(image, caption)`` by random access (one read at the image's offset in its tar)."""

    streams = True  # train_contrastive and encode_images stream it in batches instead of indexing it

    def __init__(self, index: ShardIndex, image_size: int, rows=None, shuffle_buffer: int = SHUFFLE_BUFFER):
        if shuffle_buffer < 1:
            raise ValueError(f"shuffle_buffer must be at least 1 sample, got {shuffle_buffer}")
        self.index, self.image_size, self.shuffle_buffer = index, int(image_size), int(shuffle_buffer)
        self.rows = np.arange(len(index), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def captions(self) -> list[str]:
        return [self.index.captions[r] for r in self.rows]

    @property
    def sample_keys(self) -> list[str]:
        """img2dataset's key of each pair (its file names in the tar): stable names for ground truth."""
        return [self.index.keys[r] for r in self.rows]

    @property
    def refs(self) -> list[str]:
        """``shard#key`` of each pair: what identifies its content (cache fingerprints)."""
        shards = self.index.shard_of(self.rows)
        return [f"{self.index.shards[s]}#{self.index.keys[r]}" for s, r in zip(shards, self.rows)]

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(shard:key, error) of the unreadable images the index left out."""
        return self.index.skipped

    def subset(self, ids) -> "ShardPairs":
        """The pairs ``ids`` of this set (ids renumbered 0..len-1 in the order given)."""
        rows = self.rows[np.asarray(ids, dtype=np.int64).reshape(-1)]
        if len(np.unique(rows)) != len(rows):
            raise ValueError("a streamed subset cannot hold a sample twice")
        return ShardPairs(self.index, self.image_size, rows, self.shuffle_buffer)

    def __getitem__(self, i):
        row = int(self.rows[i])
        return _load_image(io.BytesIO(read_image_bytes(self.index, row)), self.image_size), self.index.captions[row]

    def stream_parts(self):
        return self, np.arange(len(self), dtype=np.int64), None

    def batches(self, batch_size: int, **options) -> "StreamBatches":
        """One pass in batches of ``(images, captions, ids)``: :func:`stream_batches`."""
        return stream_batches(self, batch_size, **options)

    def __iter__(self):
        return iter_samples(self)


class StreamSubset(IterableDataset):
    """Some samples of a streamed view (e.g. a filtered poisoned set), still streamed: id ``i`` is the view's
    ``ids[i]``; ``ds[i]`` is ``view[ids[i]]``."""

    streams = True

    def __init__(self, view, ids):
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(view)):
            raise IndexError(f"subset ids must lie in [0, {len(view) - 1}]")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("a streamed subset cannot hold a sample twice")
        self.view, self.ids = view, ids

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def captions(self) -> list[str]:
        captions = self.view.captions
        return [captions[i] for i in self.ids]

    def __getitem__(self, i):
        return self.view[int(self.ids[i])]

    def stream_parts(self):
        pairs, select, inner = self.view.stream_parts()
        finish = None if inner is None else functools.partial(_finish_subset, inner, self.ids)
        return pairs, select[self.ids], finish

    def batches(self, batch_size: int, **options) -> "StreamBatches":
        return stream_batches(self, batch_size, **options)

    def __iter__(self):
        return iter_samples(self)


def _finish_subset(inner, ids, image, caption, i):
    return inner(image, caption, int(ids[i]))


def as_stream(dataset):
    """The streamed view behind ``dataset`` — a streamed set itself, or a torch ``Subset`` of one (as a
    :class:`StreamSubset`) — or None for a map-style data set."""
    if getattr(dataset, "streams", False):
        return dataset
    if isinstance(dataset, Subset):
        inner = as_stream(dataset.dataset)
        return None if inner is None else StreamSubset(inner, dataset.indices)
    return None


def iter_samples(view, batch_size: int = 64):
    """``(image, caption, id)`` of every sample of a streamed view, in id order within each DataLoader worker."""
    for images, captions, ids in stream_batches(view, batch_size, drop_last=False):
        yield from zip(images, captions, ids.tolist())


# ---------------------------------------------------------------------------------------------------------------
# Random access: one member read at its offset
# ---------------------------------------------------------------------------------------------------------------

def read_image_bytes(index: ShardIndex, row: int) -> bytes:
    s = int(index.shard_of(row))
    offset, size = _member_offsets(index, s)[row - int(index.bounds[s])]
    with open(index.shards[s], "rb") as f:
        f.seek(int(offset))
        return f.read(int(size))


@functools.lru_cache(maxsize=OFFSET_TABLES)
def _member_offsets(index: ShardIndex, s: int) -> np.ndarray:
    """(offset, size) of the image of each indexed sample of shard ``s``, from the tar's headers alone."""
    from webdataset.tariterators import base_plus_ext

    first, end = int(index.bounds[s]), int(index.bounds[s + 1])
    position = {key: i for i, key in enumerate(index.keys[first:end])}
    table, rank = np.full((end - first, 2), -1, dtype=np.int64), np.full(end - first, len(IMAGE_EXTS))
    try:
        with tarfile.open(index.shards[s], "r:") as tar:  # uncompressed: reading headers seeks over the data
            for member in tar:
                key, ext = base_plus_ext(member.name)
                ext = (ext or "").lower()
                i = position.get(key)
                if i is not None and member.isfile() and ext in IMAGE_EXTS and IMAGE_EXTS.index(ext) < rank[i]:
                    table[i], rank[i] = (member.offset_data, member.size), IMAGE_EXTS.index(ext)
    except tarfile.TarError as err:
        raise ValueError(f"cannot read {index.shards[s]} by offset ({err}): random access needs uncompressed .tar "
                         "shards, as img2dataset writes them") from err
    if (table < 0).any():
        raise RuntimeError(_changed(index, s))
    return table


def _changed(index: ShardIndex, s: int) -> str:
    return (f"{index.shards[s]} no longer holds every sample its index lists: the shard changed after it was "
            "indexed. Delete the cached index ($CLIPDEF_CACHE/shards/) to index the shards again.")


# ---------------------------------------------------------------------------------------------------------------
# Streaming passes
# ---------------------------------------------------------------------------------------------------------------

def stream_batches(view, batch_size: int, *, seed: int | None = None, epoch: int = 0, rank: int = 0,
                   world: int = 1, drop_last: bool = True, shuffle_buffer: int | None = None) -> "StreamBatches":
    """One pass over a streamed view in batches of ``(images, captions, ids)`` for rank ``rank`` of ``world``: an
    IterableDataset for a DataLoader with ``batch_size=None`` (its workers split the rank's share).

    ``seed`` None: index order (embedding a set: the ids say where each sample goes when workers interleave).
    A seed: the shards in an order drawn from (seed, epoch), the samples through a seeded buffer of
    ``shuffle_buffer`` undecoded samples — the same (seed, epoch, world, workers) give the same batches.
    Rank r reads the r-th of ``world`` equal contiguous parts of the epoch's order (the ``len % world`` left over
    sit this epoch out), so every rank takes the same number of steps; ``drop_last`` drops each rank's partial
    last batch."""
    return StreamBatches(view, batch_size, seed, epoch, rank, world, drop_last, shuffle_buffer)


class StreamBatches(IterableDataset):
    """The batches of one pass of one rank (see :func:`stream_batches`); ``len`` is their number."""

    def __init__(self, view, batch_size: int, seed, epoch: int, rank: int, world: int, drop_last: bool,
                 shuffle_buffer):
        if batch_size < 1 or not 0 <= rank < world:
            raise ValueError(f"need batch_size ≥ 1 and 0 ≤ rank < world; got {batch_size}, {rank}, {world}")
        self.pairs, self.select, self.finish = view.stream_parts()
        self.batch_size, self.seed, self.epoch, self.rank, self.world = batch_size, seed, epoch, rank, world
        self.drop_last = drop_last
        self.shuffle_buffer = shuffle_buffer or self.pairs.shuffle_buffer
        self.per_rank = len(self.select) // world

    def __len__(self) -> int:
        full, rest = divmod(self.per_rank, self.batch_size)
        return full + int(rest > 0 and not self.drop_last)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        start, stop = self._worker_span(worker, workers)
        share = self.epoch_order()[self.rank * self.per_rank:][start:stop]
        samples = self._read(share)
        if self.seed is not None:
            rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
            samples = _buffer_shuffle(samples, self.shuffle_buffer, rng)
        yield from self._batched(samples)

    def epoch_order(self) -> np.ndarray:
        """The view's ids in this pass's order: shard by shard (the shards seeded-shuffled per epoch), each shard's
        samples in tar order."""
        rows = self.pairs.rows[self.select]
        shard = self.pairs.index.shard_of(rows)
        place = np.arange(len(self.pairs.index.shards))
        if self.seed is not None:
            place[np.random.default_rng([self.seed, self.epoch]).permutation(len(place))] = np.arange(len(place))
        return np.lexsort((rows, place[shard]))

    def _worker_span(self, worker: int, workers: int) -> tuple[int, int]:
        """This worker's contiguous block of whole batches of the rank's share (positions in it)."""
        steps = len(self)
        first, last = worker * steps // workers, (worker + 1) * steps // workers
        return first * self.batch_size, min(last * self.batch_size, self.per_rank)

    def _read(self, ids: np.ndarray):
        """(id, row, image bytes) for ``ids`` in order, each shard streamed once per run of its samples."""
        rows = self.pairs.rows[self.select[ids]]
        shards = self.pairs.index.shard_of(rows)
        for run in np.split(np.arange(len(ids)), np.flatnonzero(np.diff(shards)) + 1):
            if len(run):
                yield from _read_run(self.pairs.index, int(shards[run[0]]), rows[run], ids[run])

    def _batched(self, samples):
        images, captions, ids = [], [], []
        for i, row, raw in samples:
            image, caption = self._decode(raw, row), self.pairs.index.captions[row]
            if self.finish is not None:
                image, caption = self.finish(image, caption, int(i))
            images.append(image)
            captions.append(caption)
            ids.append(int(i))
            if len(ids) == self.batch_size:
                yield torch.stack(images), captions, torch.tensor(ids)
                images, captions, ids = [], [], []
        if ids:  # only without drop_last: the plan gives each worker whole batches otherwise
            yield torch.stack(images), captions, torch.tensor(ids)

    def _decode(self, raw: bytes, row: int) -> torch.Tensor:
        try:
            return _load_image(io.BytesIO(raw), self.pairs.image_size)
        except Exception as err:  # PIL raises many types for broken files
            index = self.pairs.index
            raise RuntimeError(f"sample {index.keys[row]} of {index.shards[int(index.shard_of(row))]} cannot be "
                               f"decoded ({err}); index the shards with check=True (the default), which leaves "
                               "such images out") from err


def _read_run(index: ShardIndex, s: int, rows: np.ndarray, ids: np.ndarray):
    """(id, row, image bytes) of ``rows`` (ascending) of shard ``s``: the shard streamed up to the last of them.
    Samples the index left out (unreadable, uncaptioned) are passed over by key."""
    expected, end, k = int(index.bounds[s]), int(index.bounds[s + 1]), 0
    for sample in shard_samples(Path(index.shards[s])):
        if expected >= end:
            break
        if sample["__key__"] != index.keys[expected]:
            continue
        row, expected = expected, expected + 1
        if row == rows[k]:
            yield int(ids[k]), row, _image_bytes(sample)
            k += 1
            if k == len(rows):
                return
    raise RuntimeError(_changed(index, s))


def _buffer_shuffle(items, size: int, rng: np.random.Generator):
    """A bounded shuffle buffer (webdataset's idea): at most ``size`` items held, each one out drawn from it."""
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer
