"""Pairs streamed from webdataset shards, on shards written here the way img2dataset writes CC3M: ``00000.tar``
holding ``000000000.jpg`` / ``.txt`` / ``.json`` per sample, beside ``00000_stats.json`` and ``00000.parquet``."""

import datetime
import io
import json
import pickle
import tarfile
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

from clipdef import data, models, poison, profiles, shards, train

PER_SHARD = 4


def key_of(shard: int, i: int) -> str:
    return f"{shard * 10_000 + i:09d}"  # img2dataset: shard id × 10^k + position, 9 digits


def colour_of(shard: int, i: int) -> tuple[int, int, int]:
    return (20 + 50 * i, 30 * shard % 256, 200)


def caption_of(shard: int, i: int) -> str:
    return f"a {'banana' if i == 1 else 'photo'} of thing {shard}-{i}"


def add_member(tar, name: str, blob: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def jpeg(colour, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def write_shards(folder: Path, n_shards: int, per_shard: int = PER_SHARD, broken=(), captionless=()) -> Path:
    """img2dataset's output folder: per shard a tar, its stats and (a stand-in for) its parquet."""
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(n_shards):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = key_of(shard, i)
                add_member(tar, f"{key}.jpg", b"not a jpeg" if (shard, i) in broken else jpeg(colour_of(shard, i)))
                if (shard, i) not in captionless:
                    add_member(tar, f"{key}.txt", caption_of(shard, i).encode())
                add_member(tar, f"{key}.json", json.dumps({"key": key, "status": "success",
                                                           "caption": caption_of(shard, i)}).encode())
        (folder / f"{shard:05d}_stats.json").write_text(json.dumps({"count": per_shard, "successes": per_shard}))
        (folder / f"{shard:05d}.parquet").write_bytes(b"PAR1 (not read) PAR1")
    return folder


@pytest.fixture
def cc3m(tmp_path):
    """3 shards of 4 samples; the image of sample 2 of shard 1 is broken."""
    return write_shards(tmp_path / "cc3m", 3, broken={(1, 2)})


def pairs(folder, **kw):
    return data.webdataset_pairs(folder, image_size=32, progress=False, **{"max_bad_fraction": 0.2, **kw})


def expected_keys(n_shards, broken=((1, 2),)):
    return [key_of(s, i) for s in range(n_shards) for i in range(PER_SHARD) if (s, i) not in broken]


def as_is(batch):
    return batch


def stream_ids(batches, num_workers=0):
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=num_workers, collate_fn=as_is)
    return [int(i) for _, _, ids in loader for i in ids]


# ---------------------------------------------------------------------------------------------------------------
# Reading: the pairs, their captions, the broken image, bad input
# ---------------------------------------------------------------------------------------------------------------

def test_pairs_stream_with_their_captions(cc3m):
    ds = pairs(cc3m)
    assert isinstance(ds, shards.ShardPairs) and len(ds) == 11
    assert ds.sample_keys == expected_keys(3)
    assert ds.captions == [caption_of(int(k) // 10_000, int(k) % 10_000) for k in ds.sample_keys]
    assert ds.skipped[0][0] == "00001.tar:000010002" and len(ds.skipped) == 1
    seen = {}
    for images, captions, ids in ds.batches(4, drop_last=False):
        for image, caption, i in zip(images, captions, ids.tolist()):
            seen[i] = (image, caption)
    assert sorted(seen) == list(range(11))
    for i, key in enumerate(ds.sample_keys):
        shard, position = int(key) // 10_000, int(key) % 10_000
        image, caption = seen[i]
        assert caption == caption_of(shard, position) and image.shape == (3, 32, 32)
        assert abs(image[0].mean().item() - colour_of(shard, position)[0] / 255) < 0.03  # decoded, resized, cropped
        assert torch.equal(image, ds[i][0]) and ds[i][1] == caption  # random access reads the same sample


def test_shard_patterns_and_bad_inputs(cc3m, tmp_path):
    assert pairs(str(cc3m / "{00000..00002}.tar")).sample_keys == expected_keys(3)
    assert pairs(str(cc3m / "0000[01].tar")).sample_keys == expected_keys(2)
    assert len(pairs([cc3m / "00002.tar"])) == PER_SHARD
    with pytest.raises(FileNotFoundError, match=r"no file of .*\{00005..00009\}.tar exists"):
        pairs(str(cc3m / "{00005..00009}.tar"))
    with pytest.raises(FileNotFoundError, match=r"2 of the 5 shards .* are missing, e.g. .*00003.tar"):
        pairs(str(cc3m / "{00000..00004}.tar"))
    with pytest.raises(FileNotFoundError, match="nothing matches"):
        pairs(str(cc3m / "cc3m-*.tar"))
    with pytest.raises(FileNotFoundError, match="holds no .tar file"):
        pairs(tmp_path)
    (tmp_path / "nocaps").mkdir()
    with tarfile.open(tmp_path / "nocaps" / "00000.tar", "w") as tar:  # images alone: no .txt, no .json
        for i in range(PER_SHARD):
            add_member(tar, f"{key_of(0, i)}.jpg", jpeg(colour_of(0, i)))
    with pytest.raises(ValueError, match="has 4 images but no captions"):
        pairs(tmp_path / "nocaps")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "00000.tar").write_bytes(b"this is not a tar file" * 40)
    with pytest.raises(ValueError, match="not a readable tar shard"):
        pairs(tmp_path / "junk")


def test_a_caption_may_come_from_the_json(tmp_path):
    folder = write_shards(tmp_path / "jsoncaps", 1, captionless={(0, 3)})
    assert pairs(folder).captions[3] == caption_of(0, 3)


def test_broken_images_are_counted_and_too_many_fail_fast(cc3m, tmp_path):
    assert len(pairs(cc3m).skipped) == 1
    with pytest.raises(data.TooManyBadImages, match=r"1 unreadable image\(s\) among the first 7 of 12 .* "
                                                    r"first: 00001.tar:000010002"):
        pairs(cc3m, max_bad_fraction=0.0)  # the stats files say 12 samples: it stops at the first broken one
    truncated = write_shards(tmp_path / "truncated", 1)
    with tarfile.open(truncated / "00000.tar", "w") as tar:  # a JPEG cut short: PIL's verify() would pass it
        for i in range(PER_SHARD):
            image = jpeg(colour_of(0, i), size=(64, 64))
            add_member(tar, f"{key_of(0, i)}.jpg", image[:len(image) // 2] if i == 0 else image)
            add_member(tar, f"{key_of(0, i)}.txt", caption_of(0, i).encode())
    ds = pairs(truncated, max_bad_fraction=0.5)
    assert len(ds) == 3 and ds.skipped[0][0] == "00000.tar:000000000"


def peak_of_a_pass(ds) -> tuple[int, int]:
    """Peak traced memory of a shuffled pass (after a first pass: imports and first-use caches are not counted)."""
    for _ in ds.batches(8, seed=0, shuffle_buffer=16):
        pass
    tracemalloc.start()
    try:
        n = sum(len(ids) for _, _, ids in ds.batches(8, seed=0, shuffle_buffer=16))
        return tracemalloc.get_traced_memory()[1], n
    finally:
        tracemalloc.stop()


def test_the_index_holds_captions_not_images_and_reads_only_what_it_needs(tmp_path, monkeypatch):
    many = write_shards(tmp_path / "many", 40)
    few = write_shards(tmp_path / "few", 4)
    big, small = pairs(many, limit=10), pairs(few, limit=10)
    assert len(big.index.shards) == 3  # the scan stopped after the third shard: 10 pairs
    assert abs(len(pickle.dumps(big)) - len(pickle.dumps(small))) < 200  # the same size, 4 or 40 shards
    tar_bytes = sum(p.stat().st_size for p in many.glob("*.tar"))
    everything = pairs(many)
    assert len(everything) == 160 and len(pickle.dumps(everything)) < tar_bytes / 10  # keys and captions only
    # a pass holds a shuffle buffer of undecoded samples and a batch, never all images: its peak memory hardly
    # grows from 4 shards to 40, and stays far below the 160 decoded images
    peak_few, n_few = peak_of_a_pass(pairs(few))
    peak_many, n_many = peak_of_a_pass(everything)
    assert (n_few, n_many) == (16, 160)
    assert peak_many < 3 * peak_few and peak_many < 160 * 3 * 32 * 32 * 4 / 4
    # the index is cached on disk: a later process reads no tar to start
    shards._cached_index.cache_clear()
    monkeypatch.setattr(shards, "shard_samples", lambda path: pytest.fail(f"{path} was read again"))
    assert pairs(many, limit=10).sample_keys == big.sample_keys


# ---------------------------------------------------------------------------------------------------------------
# Passes: stable ids, shuffling, workers, ranks
# ---------------------------------------------------------------------------------------------------------------

def test_two_passes_give_the_same_ids_and_the_same_poisoned_set(cc3m):
    ds = pairs(cc3m)
    first = [(i, c) for _, c, i in ds]
    assert first == [(i, c) for _, c, i in ds] and [i for i, _ in first] == list(range(len(ds)))
    view = poison.PoisonedPairs(ds, "badnet", rate=0.3, target="banana", seed=0)
    again = poison.PoisonedPairs(pairs(cc3m), "badnet", rate=0.3, target="banana", seed=0)
    assert view.streams and view.poisoned_indices.tolist() == again.poisoned_indices.tolist()
    info = view.poison_info()
    assert info["sample_keys"] == [ds.sample_keys[i] for i in view.poisoned_indices]
    streamed = {i: (image, caption) for batch in view.batches(5, drop_last=False)
                for image, caption, i in zip(batch[0], batch[1], batch[2].tolist())}
    for i in range(len(view)):
        image, caption = view[i]  # random access poisons the same way
        assert torch.equal(streamed[i][0], image) and streamed[i][1] == caption
        assert (caption != ds.captions[i]) == bool(view.is_poisoned[i])
    # clean-label: only pairs whose caption names the target, captions kept
    clean_label = poison.PoisonedPairs(ds, "clean_label", count=2, target="banana", seed=0)
    assert all("banana" in ds.captions[i] for i in clean_label.poisoned_indices)


def test_shard_shuffling_changes_the_order_not_the_set(tmp_path):
    ds = pairs(write_shards(tmp_path / "cc3m", 6))
    order = lambda epoch, seed=0: stream_ids(ds.batches(4, seed=seed, epoch=epoch, drop_last=False))
    assert order(0) == order(0)  # seeded: reproducible
    assert order(0) != order(1) and sorted(order(0)) == sorted(order(1)) == list(range(24))
    assert order(0) != list(range(24)) and order(0, seed=1) != order(0)
    # the shuffle buffer mixes within what it holds; shard shuffling moves whole shards
    unbuffered = stream_ids(ds.batches(4, seed=0, epoch=0, drop_last=False, shuffle_buffer=1))
    shard_order = [unbuffered[j] // PER_SHARD for j in range(0, 24, PER_SHARD)]
    assert sorted(shard_order) == list(range(6)) and shard_order != list(range(6))


def test_dataloader_workers_give_each_sample_once_per_epoch(tmp_path):
    ds = pairs(write_shards(tmp_path / "cc3m", 5))
    for seed in (None, 0):
        ids = stream_ids(ds.batches(3, seed=seed, drop_last=False), num_workers=2)
        assert sorted(ids) == list(range(20))
    kept = stream_ids(ds.batches(3, seed=0), num_workers=2)  # drop_last: whole batches only
    assert len(kept) == 18 and len(set(kept)) == 18
    # torchrun ranks: disjoint shares, the same number of steps on each
    rank_batches = [ds.batches(3, seed=0, epoch=1, rank=r, world=3) for r in range(3)]
    shares = [stream_ids(b, num_workers=2) for b in rank_batches]
    assert {len(b) for b in rank_batches} == {2} and all(len(s) == 6 for s in shares)
    assert len(set().union(*shares)) == 18


def test_encode_images_streams_in_id_order(cc3m, tiny_bundle):
    ds = pairs(cc3m)
    one_by_one = torch.stack([ds[i][0] for i in range(len(ds))])
    streamed = models.encode_images(tiny_bundle, ds, batch_size=3, num_workers=2)
    assert torch.allclose(streamed, models.encode_images(tiny_bundle, one_by_one, batch_size=3), atol=1e-5)


def test_defense_pairs_follow_the_finetuning_pairs(tmp_path):
    folder = write_shards(tmp_path / "cc3m", 3)
    cfg = profiles.resolve("paper", model="clipdef-tiny", pretrained=None, image_size=32,
                           finetune_shards=str(folder / "{00000..00002}.tar"), n_finetune=6, n_defense=4)
    tune, defend = data.finetune_pairs(cfg, progress=False), data.defense_pairs(cfg, progress=False)
    assert tune.sample_keys + defend.sample_keys == expected_keys(3, broken=())[:10]
    assert len(tune) == 6 and len(defend) == 4 and not set(tune.sample_keys) & set(defend.sample_keys)
    assert sorted(stream_ids(defend.batches(2, seed=0))) == [0, 1, 2, 3]  # ids of its own, from 0
    with pytest.raises(ValueError, match="none left for the defense"):
        data.defense_pairs(cfg.replace(n_finetune=12, n_defense=5), progress=False)
    assert not [m for m in cfg.missing() if m.startswith("finetune_shards")]
    missing = cfg.replace(finetune_shards=str(folder / "{00000..00005}.tar")).missing()
    assert any(m.startswith("finetune_shards: webdataset shards not found: 3 of the 6") for m in missing)


# ---------------------------------------------------------------------------------------------------------------
# Training on shards
# ---------------------------------------------------------------------------------------------------------------

def test_train_contrastive_on_shards(cc3m):
    bundle = models.create_clip("clipdef-tiny", None, seed=0)
    view = poison.PoisonedPairs(pairs(cc3m), "badnet", rate=0.2, target="banana", seed=0)
    seen = []

    def loss(b, images, captions, idx):
        seen.append(idx.tolist())
        assert images.shape[1:] == (3, 32, 32) and len(captions) == len(idx)
        return train.default_clip_loss(b, images, captions, idx)

    history = train.train_contrastive(bundle, view, epochs=2, lr=1e-4, batch_size=4, warmup_steps=1, seed=0,
                                      loss_fn=loss, progress=False, num_workers=2)
    assert len(history.steps) == 4 and all(np.isfinite(s["loss"]) for s in history.steps)
    assert len({i for batch in seen[:2] for i in batch}) == 8  # an epoch: disjoint batches
    # a filtered set (a torch Subset of the streamed view) streams too
    keep = [i for i in range(len(view)) if not view.is_poisoned[i]]
    seen.clear()
    train.train_contrastive(bundle, torch.utils.data.Subset(view, keep), epochs=1, lr=1e-4, batch_size=3,
                            warmup_steps=1, loss_fn=loss, progress=False)
    assert len(seen) == len(keep) // 3 and all(0 <= i < len(keep) for batch in seen for i in batch)
    assert data.subset(view, keep).captions == [view.captions[i] for i in keep]


def _ranks_worker(rank, folder, out):
    bundle = models.create_clip("clipdef-tiny", None, seed=0)
    seen = []

    def loss(b, images, captions, idx):
        seen.append(idx.tolist())
        return train.default_clip_loss(b, images, captions, idx)

    train.train_contrastive(bundle, pairs(folder), epochs=1, lr=1e-4, batch_size=4, warmup_steps=1, seed=0,
                            loss_fn=loss, progress=False)
    (out / f"rank{rank}.json").write_text(json.dumps(seen))


def _join(rank, store, folder, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    try:
        _ranks_worker(rank, folder, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_train_contrastive_on_shards_under_two_ranks(cc3m, tmp_path):
    pairs(cc3m)  # index once (as clipdef.distributed's rank 0 does): the ranks read the cached index
    with tempfile.TemporaryDirectory() as rendezvous:
        mp.spawn(_join, args=(Path(rendezvous) / "store", cc3m, tmp_path), nprocs=2, join=True)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 2  # 11 pairs, 5 per rank, global batch 4: 2 steps on each rank
    ids = [{i for batch in s for i in batch} for s in seen]
    assert all(len(batch) == 2 for s in seen for batch in s) and not ids[0] & ids[1]
