import math

import pytest
import torch

from clipdef import data, models, profiles, stages, train


@pytest.fixture(scope="module")
def pairs():
    w = data.load_world("pretrain", 512, seed=0, progress=False)
    return data.PairDataset(data.to_float_images(w.images), w.captions)


def fresh():
    return models.create_clip("clipdef-tiny", None, seed=0)


def test_loss_decreases(pairs):
    bundle = fresh()
    hist = train.train_contrastive(bundle, pairs, epochs=8, lr=2e-3, batch_size=64, warmup_steps=4,
                                   progress=False).frame()
    first, last = hist["loss"].iloc[:8].mean(), hist["loss"].iloc[-8:].mean()
    assert first > math.log(64) - 0.3  # starts near chance
    assert last < first - 0.5, (first, last)  # measured: 4.47 → 4.12 after 4 epochs (1 thread); 8 epochs here


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

    with pytest.raises(train.TrainingDiverged,
                       match=r"step 5 .*last good checkpoint \(after epoch 1\): .*run\.safetensors"):
        train.train_contrastive(fresh(), pairs, epochs=3, lr=1e-3, batch_size=128, loss_fn=poisoned_loss,
                                progress=False, checkpoint=tmp_path / "run")
    assert (tmp_path / "run.safetensors").exists()  # epoch 1 finished before the NaN


def test_nan_in_the_first_epoch_names_no_checkpoint(pairs, tmp_path):
    def nan_loss(bundle, images, captions, idx):
        loss, logs = train.default_clip_loss(bundle, images, captions, idx)
        return loss * float("nan"), logs

    with pytest.raises(train.TrainingDiverged, match=r"step 0 .*no checkpoint yet"):
        train.train_contrastive(fresh(), pairs, epochs=2, lr=1e-3, batch_size=128, loss_fn=nan_loss,
                                progress=False, checkpoint=tmp_path / "run")
    assert not (tmp_path / "run.safetensors").exists()


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


def test_a_warm_up_is_capped_at_a_share_of_its_run():
    # the tiny profile's poisoning (150 steps) gets 30 of its 50; the paper's (39,060 steps) 7,812 of its 10,000
    assert [train.warmup_length(t, w) for t, w in ((150, 50), (1116, 50), (39_060, 10_000), (3, 50))] == \
        [30, 50, 7812, 1]
    assert train.warmup_length(39_060, 10_000, max_share=1.0) == 10_000


def test_pretrained_clip_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPDEF_CACHE", str(tmp_path))  # a cache of its own: other tests train models too
    cfg = profiles.resolve("smoke", n_pretrain=256, batch_size=64)
    first = stages.pretrained_clip(cfg, progress=False)
    files = sorted((tmp_path / "models").glob("*-final.safetensors"))
    assert len(files) == 1
    second = stages.pretrained_clip(cfg, progress=False)  # loads, does not retrain
    for a, b in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
    assert len(stages.pretraining_history(cfg)) > 0


def test_classifier_learns_and_shapes():
    from clipdef.models import PreActResNet

    torch.manual_seed(0)
    labels = torch.arange(256) % 4
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.1]])
    images = (colours[labels].view(-1, 3, 1, 1) + 0.3 * torch.randn(256, 3, 16, 16)).clamp(0, 1)
    ds = data.LabelledDataset(images, labels, ["a", "b", "c", "d"])
    model = PreActResNet(4, width=8)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 4) and model(torch.rand(2, 3, 48, 48)).shape == (2, 4)
    hist = train.train_classifier(model, ds, epochs=3, lr=0.05, batch_size=32, progress=False).frame()
    assert hist["loss"].iloc[-4:].mean() < 0.5 * hist["loss"].iloc[:4].mean()
    accuracy = (train.classifier_logits(model, images).argmax(1) == labels).float().mean()
    assert accuracy > 0.9
    with pytest.raises(ValueError, match="num_classes"):
        PreActResNet(1)


def test_classifier_early_stop_and_bad_optimizer():
    from clipdef.models import PreActResNet

    ds = data.LabelledDataset(torch.rand(32, 3, 16, 16), torch.arange(32) % 2, ["a", "b"])
    hist = train.train_classifier(PreActResNet(2, width=4), ds, epochs=5, lr=0.01, batch_size=16, progress=False,
                                  on_epoch_end=lambda e, m: {"stop": e == 2})
    assert hist.steps[-1]["epoch"] == 2
    with pytest.raises(ValueError, match="valid: 'sgd', 'adam'"):
        train.train_classifier(PreActResNet(2, width=4), ds, epochs=1, lr=0.01, optimizer="lbfgs")


def test_random_crop_flip_keeps_shape_and_content():
    x = torch.rand(8, 3, 16, 16)
    y = train.random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert torch.equal(train.random_crop_flip(x, pad=0, generator=torch.Generator().manual_seed(1)).sort(-1)[0],
                       x.sort(-1)[0])  # no padding: only flips, which permute pixels within rows


def test_random_crop_flip_crops_every_image_on_its_own_with_zero_padding():
    x = torch.ones(64, 3, 8, 8)
    y = train.random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(0))
    zeros = (y == 0).flatten(1).sum(1)
    assert len(set(zeros.tolist())) > 1          # the crops differ from image to image
    assert (zeros > 0).any() and (y <= 1).all()  # zero padding shows where a crop was shifted
    assert train.random_crop_flip(torch.ones(2, 3, 32, 32), generator=torch.Generator().manual_seed(1)).shape == \
        (2, 3, 32, 32)                           # the default pad scales BackdoorBench's 4 px at 32
