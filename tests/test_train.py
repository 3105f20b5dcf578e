import math

import pytest
import torch

from clipdef import data, models, profiles, train


@pytest.fixture(scope="module")
def pairs():
    w = data.load_world("pretrain", 512, seed=0, progress=False)
    return data.PairDataset(data.to_float_images(w.images), w.captions)


def fresh():
    return models.create_clip("clipdef-tiny", None, seed=0)


def test_loss_decreases(pairs):
    bundle = fresh()
    hist = train.train_contrastive(bundle, pairs, epochs=4, lr=2e-3, batch_size=64, warmup_steps=4,
                                   progress=False).frame()
    first, last = hist["loss"].iloc[:8].mean(), hist["loss"].iloc[-8:].mean()
    assert first > math.log(64) - 0.3  # starts near chance
    assert last < first - 0.5, (first, last)


def test_killed_run_resumes_to_the_same_weights(pairs, tmp_path):
    """A run killed during epoch 3 of 4 and resumed ends with the weights of an uninterrupted run (CPU, same seed)."""
    steps_per_epoch = len(pairs) // 128
    calls = {"n": 0}

    def killed_in_epoch_3(bundle, images, captions, idx):
        calls["n"] += 1
        if calls["n"] > 2 * steps_per_epoch + 1:
            raise KeyboardInterrupt("killed")
        return train.default_clip_loss(bundle, images, captions, idx)

    kwargs = dict(epochs=4, lr=1e-3, batch_size=128, progress=False, seed=1)
    with pytest.raises(KeyboardInterrupt):
        train.train_contrastive(fresh(), pairs, loss_fn=killed_in_epoch_3, checkpoint=tmp_path / "run", **kwargs)
    resumed = fresh()  # a new process rebuilds the model and finds the epoch-2 checkpoint
    hist = train.train_contrastive(resumed, pairs, checkpoint=tmp_path / "run", **kwargs)
    assert [s["epoch"] for s in hist.steps] == [e for e in (1, 2, 3, 4) for _ in range(steps_per_epoch)]
    reference = fresh()
    train.train_contrastive(reference, pairs, **kwargs)
    for a, b in zip(reference.model.parameters(), resumed.model.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def test_nan_loss_stops_with_step_and_checkpoint(pairs, tmp_path):
    calls = {"n": 0}

    def poisoned_loss(bundle, images, captions, idx):
        calls["n"] += 1
        loss, logs = train.default_clip_loss(bundle, images, captions, idx)
        return (loss * float("nan") if calls["n"] > 5 else loss), logs

    with pytest.raises(train.TrainingDiverged, match=r"step 5 .*last good checkpoint: .*run\.safetensors"):
        train.train_contrastive(fresh(), pairs, epochs=3, lr=1e-3, batch_size=128, loss_fn=poisoned_loss,
                                progress=False, checkpoint=tmp_path / "run")
    assert (tmp_path / "run.safetensors").exists()  # epoch 1 finished before the NaN


def test_empty_and_bad_arguments(pairs):
    with pytest.raises(ValueError, match="empty"):
        train.train_contrastive(fresh(), data.PairDataset(torch.zeros(0, 3, 32, 32), []), epochs=1, lr=1e-3)
    with pytest.raises(ValueError, match="lr > 0"):
        train.train_contrastive(fresh(), pairs, epochs=1, lr=0)


def test_schedule():
    assert train.cosine_with_warmup(0, 100, 10) == pytest.approx(0.1)
    assert train.cosine_with_warmup(9, 100, 10) == pytest.approx(1.0)
    assert train.cosine_with_warmup(55, 100, 10) == pytest.approx(0.5)
    assert train.cosine_with_warmup(100, 100, 10) == pytest.approx(0.0)


def test_pretrained_clip_is_cached(private_cache):
    cfg = profiles.resolve("smoke", n_pretrain=256, batch_size=64)
    first = train.pretrained_clip(cfg, progress=False)
    files = sorted((private_cache / "models").glob("*-final.safetensors"))
    assert len(files) == 1
    second = train.pretrained_clip(cfg, progress=False)  # loads, does not retrain
    for a, b in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
    assert len(train.pretraining_history(cfg)) > 0
