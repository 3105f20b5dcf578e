"""Stand-in data in the real formats, to run the real-data path (the ``colab`` and ``paper`` profiles) where the real
data is not: the world's scenes written as CC3M-style pairs (a CSV of JPEG files with captions, or webdataset shards
as img2dataset writes them), an ImageNet-val style class folder with its class-names file, CIFAR-10's binary
batches, and a local checkpoint of random weights of the right architecture instead of a download.

``tests/test_real_profile_chapters.py`` runs the chapters on them; ``scripts/gpu_check.py`` measures the real
path's throughput on them. The readers these formats must satisfy: :func:`clipdef.data.csv_pairs`,
:func:`clipdef.data.webdataset_pairs` (:mod:`clipdef.shards`), :func:`clipdef.data.image_folder` and
:func:`clipdef.data.cifar10_binary`.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Scenes are drawn at most this large and resized up: the world's shapes are flat colours, so a 224 px scene drawn at
# 112 and resized looks alike, at a quarter of the drawing time (a stand-in needs the format, not the detail).
RENDER_SIDE = 112
CIFAR_SIDE = 32
CIFAR_RECORD = 1 + 3 * CIFAR_SIDE * CIFAR_SIDE   # one label byte, then the red, green and blue planes


@dataclass
class Scenes:
    """Images (N, side, side, 3) uint8 with their captions and class labels."""

    images: np.ndarray
    captions: list[str]
    labels: np.ndarray
    class_names: tuple[str, ...]


def scenes(split: str, n: int, side: int, seed: int = 0, workers: int = 1) -> Scenes:
    """``n`` scenes of the world's ``split`` at ``side`` pixels (drawn at ``min(side, RENDER_SIDE)``)."""
    from PIL import Image

    from clipdef import world

    if n < 1 or side < 8:
        raise ValueError(f"need n ≥ 1 scenes of side ≥ 8 px, got n={n}, side={side}")
    drawn = world.make_split(split, n, seed=seed, image_size=min(side, RENDER_SIDE), workers=workers)
    images = drawn.images
    if images.shape[1] != side:
        images = np.stack([np.asarray(Image.fromarray(im).resize((side, side), Image.BICUBIC)) for im in images])
    return Scenes(images, list(drawn.captions), np.asarray(drawn.labels), tuple(drawn.class_names))


def jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def write_cc3m_csv(folder: str | Path, pairs: Scenes) -> Path:
    """CC3M as a CSV: one JPEG per pair in ``folder/images/`` and ``folder/train.csv`` with columns
    ``filepath,caption`` (paths relative to the CSV). Returns the CSV's path."""
    import csv

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / "train.csv"
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["filepath", "caption"])
        for i, (image, caption) in enumerate(zip(pairs.images, pairs.captions)):
            name = f"images/{i:09d}.jpg"
            (folder / name).write_bytes(jpeg_bytes(image))
            out.writerow([name, caption])
    return path


def _add_member(tar: tarfile.TarFile, name: str, blob: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def write_cc3m_shards(folder: str | Path, pairs: Scenes, per_shard: int = 1000) -> Path:
    """CC3M as img2dataset writes it: ``00000.tar`` … holding ``<key>.jpg``, ``<key>.txt`` and ``<key>.json`` per
    sample (key = shard × 10^4 + position, nine digits), beside ``00000_stats.json`` and a parquet per shard (a
    placeholder: clipdef reads the tars). Returns the folder."""
    if per_shard < 1 or per_shard > 10_000:
        raise ValueError(f"per_shard must lie in [1, 10000] (img2dataset's keys hold 4 digits of position), got "
                         f"{per_shard}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(pairs.captions)
    for shard, start in enumerate(range(0, n, per_shard)):
        rows = range(start, min(n, start + per_shard))
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for position, i in enumerate(rows):
                key = f"{shard * 10_000 + position:09d}"
                _add_member(tar, f"{key}.jpg", jpeg_bytes(pairs.images[i]))
                _add_member(tar, f"{key}.txt", pairs.captions[i].encode())
                _add_member(tar, f"{key}.json", json.dumps({"key": key, "status": "success",
                                                            "caption": pairs.captions[i]}).encode())
        (folder / f"{shard:05d}_stats.json").write_text(json.dumps({"count": len(rows), "successes": len(rows)}))
        (folder / f"{shard:05d}.parquet").write_bytes(b"PAR1 (a placeholder: clipdef reads the tars) PAR1")
    return folder


def write_imagenet_val(folder: str | Path, labelled: Scenes) -> tuple[Path, Path]:
    """ImageNet-val style: one sub-folder per class (``n%08d`` of the class index, so sorted = class order) of JPEGs,
    and ``classnames.txt`` (one readable name per line, in folder order). Returns (the folder, the names file)."""
    root = Path(folder) / "val"
    for i, (image, label) in enumerate(zip(labelled.images, labelled.labels)):
        sub = root / f"n{int(label):08d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:08d}.JPEG").write_bytes(jpeg_bytes(image))
    used = sorted({int(label) for label in labelled.labels})
    names = Path(folder) / "classnames.txt"
    names.write_text("\n".join(labelled.class_names[c] for c in used) + "\n")
    return root, names


def cifar_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """CIFAR-10's binary records: per image its label byte, then its 1,024 red, green and blue bytes."""
    images, labels = np.asarray(images, dtype=np.uint8), np.asarray(labels)
    if images.shape[1:] != (CIFAR_SIDE, CIFAR_SIDE, 3):
        raise ValueError(f"CIFAR-10 images are {CIFAR_SIDE}×{CIFAR_SIDE}×3, got {images.shape[1:]}")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError("CIFAR-10 labels lie in 0..9")
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([labels.astype(np.uint8)[:, None], planes], 1).tobytes()


def write_cifar10_binary(folder: str | Path, train: tuple[np.ndarray, np.ndarray],
                         test: tuple[np.ndarray, np.ndarray]) -> Path:
    """``data_batch_1.bin`` … ``data_batch_5.bin`` (the training images in five equal parts) and
    ``test_batch.bin``, as ``cifar-10-batches-bin`` holds them. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(train[1])), 5)
    for b, rows in enumerate(parts, 1):
        (folder / f"data_batch_{b}.bin").write_bytes(cifar_records(train[0][rows], train[1][rows]))
    (folder / "test_batch.bin").write_bytes(cifar_records(*test))
    return folder


def random_cifar(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noise images with labels 0..9 in turn (when only the format matters)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, CIFAR_SIDE, CIFAR_SIDE, 3), dtype=np.uint8), np.arange(n) % 10


def world_cifar(n: int, seed: int = 0, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The world's single-object scenes at CIFAR's side, labelled by their class index modulo 10 (a learnable task
    with CIFAR-10's ten labels)."""
    drawn = scenes("val", n, CIFAR_SIDE, seed=seed, workers=workers)
    return drawn.images, drawn.labels % 10


def random_weights(model: str, path: str | Path, seed: int = 0) -> Path:
    """A checkpoint of ``model`` (an open_clip architecture: RN50, ViT-B-32, clipdef-tiny) with random weights, for
    ``pretrained=<path>`` where no weights can be downloaded. Returns the file's path."""
    from clipdef.models import create_clip, save_checkpoint

    return save_checkpoint(create_clip(model, None, seed=seed).model, path, meta={"weights": "random", "seed": seed})
