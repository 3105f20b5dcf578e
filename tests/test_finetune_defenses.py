import numpy as np
import pytest
import torch

from clipdef import data, models
from clipdef.defenses import finetune


@pytest.fixture(scope="module")
def pairs():
    w = data.load_world("finetune", 96, seed=0, progress=False)
    return data.PairDataset(data.to_float_images(w.images), w.captions)


@pytest.mark.parametrize("method", finetune.METHODS)
def test_each_defense_trains_and_leaves_the_original_untouched(method, pairs):
    bundle = models.create_clip("clipdef-tiny", None, seed=0)
    before = [p.clone() for p in bundle.model.parameters()]
    params = {"samples_per_epoch": 64} if method == "cleanerclip" else {}
    defended, hist = finetune.defend(bundle, pairs, method, epochs=2, lr=1e-3, batch_size=32, warmup_steps=2,
                                     progress=False, **params)
    frame = hist.frame()
    assert len(frame) == 6 and np.isfinite(frame["loss"]).all()
    assert all(torch.equal(a, b) for a, b in zip(before, bundle.model.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(before, defended.model.parameters()))
    if method == "cleanerclip":
        assert frame["subcaption"].notna().any()


def test_cleanerclip_gives_every_batch_its_share_of_sub_captions_deterministically(pairs):
    caps = pairs.captions  # 96 pairs
    a, b = finetune.CleanerCLIPLoss(caps, seed=3, samples_per_epoch=48), \
        finetune.CleanerCLIPLoss(caps, seed=3, samples_per_epoch=48)
    first = [a.rows_of(32) for _ in range(3)]
    assert first == [b.rows_of(32) for _ in range(3)]         # seeded: the same rows in the same steps
    assert all(len(rows) == 16 for rows in first)             # half the pairs per epoch → half of every batch
    assert len({tuple(rows) for rows in first}) == 3          # drawn afresh each step
    few = finetune.CleanerCLIPLoss(caps, seed=3, samples_per_epoch=1)
    assert len(few.rows_of(32)) == 2                          # every batch carries the term: at least two rows
    assert few.rows_of(1) == [] and len(a.rows_of(3)) == 2


def test_clear_errors(pairs):
    bundle = models.create_clip("clipdef-tiny", None, seed=0)
    with pytest.raises(ValueError, match="empty"):
        finetune.defend(bundle, data.PairDataset(torch.zeros(0, 3, 32, 32), []), "ft", epochs=1, lr=1e-3,
                        batch_size=8)
    with pytest.raises(ValueError, match="valid: ft, cleanclip, cleanerclip"):
        finetune.defend(bundle, pairs, "fineprune", epochs=1, lr=1e-3, batch_size=8)
    with pytest.raises(ValueError, match="temperatures must be positive"):
        finetune.CleanerCLIPLoss(pairs.captions, tau_neg=0)

    class AllPoisoned(data.PairDataset):
        is_poisoned = np.ones(96, dtype=bool)

    with pytest.raises(ValueError, match="every pair .* is poisoned"):
        finetune.defend(bundle, AllPoisoned(pairs.images, pairs.captions), "cleanclip", epochs=1, lr=1e-3,
                        batch_size=8)


def test_autoaugment_keeps_range_and_shape():
    x = torch.rand(4, 3, 32, 32)
    y = finetune.autoaugment(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
