import numpy as np
import pytest
import torch

from clipdef import data, evaluate, profiles, stages


def brute_topk(logits, targets, k):
    return np.mean([t in np.argsort(-row, kind="stable")[:k] for row, t in zip(logits, targets)])


def test_topk_against_brute_force():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 12))
    labels = rng.integers(0, 12, 200)
    acc = evaluate.topk_accuracy(logits, labels, ks=(1, 3, 5, 10))
    for k in (1, 3, 5, 10):
        assert acc[f"ca_top{k}"] == pytest.approx(brute_topk(logits, labels, k))
    asr = evaluate.attack_success_rate(logits, 4, ks=(1, 5))
    assert asr["asr_top5"] == pytest.approx(brute_topk(logits, [4] * 200, 5))


def test_k_larger_than_classes_is_capped():
    assert evaluate.topk_accuracy(np.eye(3), [0, 1, 2], ks=(10,))["ca_top10"] == 1.0
    assert evaluate.chance_topk(20)["ca_top10"] == 0.5


def test_templates():
    assert len(evaluate.templates("openai")) == 80
    assert evaluate._fill("a photo of a {}.", "orange") == "a photo of an orange."
    with pytest.raises(ValueError, match="valid"):
        evaluate.templates("imagenet")


def test_asr_excludes_target_class_images(tiny_bundle):
    """Images of the target class never enter the ASR set."""
    seen = []

    def trigger(images):
        seen.append(len(images))
        return images

    images, labels = torch.rand(10, 3, 32, 32), torch.tensor([0, 6, 6, 1, 2, 6, 3, 4, 5, 7])
    names = [f"c{i}" for i in range(6)] + ["banana", "c7"]
    m = evaluate.evaluate_clip(tiny_bundle, images, labels, names, ["a photo of a {}."], trigger=trigger)
    assert seen == [7] and set(m) >= {"ca_top1", "asr_top10"}


def test_zero_shot_beats_chance_after_short_training():
    # ~500 steps: measured 11 % top-1 / 44 % top-5 (chance 5 % / 25 %) with 1 and with 2 threads
    cfg = profiles.resolve("smoke", n_pretrain=8192, pretrain_epochs=8, batch_size=128, n_eval=400,
                           pretrain_lr=2e-3, warmup_steps=20)
    clip = stages.pretrained_clip(cfg, progress=False)
    ev = data.world_classification(cfg)
    acc = evaluate.evaluate_clip(clip, ev.images, ev.labels, ev.class_names, evaluate.WORLD_TEMPLATES)
    chance = evaluate.chance_topk(len(ev.class_names))
    assert acc["ca_top1"] > 1.6 * chance["ca_top1"], acc
    assert acc["ca_top5"] > chance["ca_top5"] + 0.12, acc
