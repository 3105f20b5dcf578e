"""Cached stages trained in parallel processes (experiments.prepare) and the pre-training's snapshots."""

import pytest
import torch

from clipdef import experiments, profiles, train


@pytest.fixture
def small_cfg():
    return profiles.resolve("smoke", n_pretrain=256, n_finetune=128, n_eval=40, batch_size=64, warmup_steps=2)


def test_prepare_dedupes_and_runs_in_process_with_one_worker(small_cfg, monkeypatch):
    calls = []
    monkeypatch.setattr(experiments, "backdoored_clip", lambda cfg, progress, **kw: calls.append(kw))
    jobs = [("backdoored_clip", dict(attack="badnet", poison_rate=0.1)),
            ("backdoored_clip", dict(poison_rate=0.1, attack="badnet")),   # the same stage, asked for twice
            ("backdoored_clip", dict(attack="sig", poison_rate=0.1))]
    experiments.prepare(small_cfg, jobs, workers=1, progress=False)
    assert calls == [dict(attack="badnet", poison_rate=0.1), dict(attack="sig", poison_rate=0.1)]
    with pytest.raises(ValueError, match="unknown stage 'pretrain'; valid: backdoored_clip"):
        experiments.prepare(small_cfg, [("pretrain", {})], workers=1)


def test_prepare_trains_in_worker_processes_and_the_chapter_then_loads(small_cfg, monkeypatch):
    train.pretrained_clip(small_cfg, progress=False)  # the shared input comes first
    jobs = [("backdoored_clip", dict(attack=a, poison_rate=0.1)) for a in ("badnet", "blended")]
    experiments.prepare(small_cfg, jobs, workers=2, progress=False)

    def no_training(*args, **kwargs):
        raise AssertionError("a prepared stage was trained again")

    monkeypatch.setattr(experiments, "train_contrastive", no_training)
    for attack in ("badnet", "blended"):
        victim = experiments.backdoored_clip(small_cfg, attack, 0.1, progress=False)
        assert victim.history is None  # loaded from the cache


def test_workers_default_to_one_per_core_on_the_cpu(small_cfg, monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert experiments.workers_for(small_cfg.replace(workers=0, device="cpu")) == 6
    assert experiments.workers_for(small_cfg.replace(workers=3)) == 3


def test_snapshots_of_the_pre_training(small_cfg):
    final = train.pretrained_clip(small_cfg, progress=False)
    early = train.pretraining_snapshot(small_cfg, 1, progress=False)
    a, b = final.model.state_dict(), early.model.state_dict()
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match=r"after epochs \(1, 2, 3\) \(and before its last, 2\)"):
        train.pretraining_snapshot(small_cfg, 2)


def test_cgd_defense_is_cached_with_its_scores_split_and_history(small_cfg, monkeypatch):
    from clipdef.defenses import cgd

    cfg = small_cfg.replace(n_sup_train=120, n_sup_heldout=40)
    first = experiments.cgd_defense(cfg, "badnet", 0.1, progress=False, unlearn_epochs=1)
    monkeypatch.setattr(cgd, "unlearn", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran again")))
    again = experiments.cgd_defense(cfg, "badnet", 0.1, progress=False, unlearn_epochs=1)
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()))
    assert (first.split.clean == again.split.clean).all() and (first.scores.r_clip == again.scores.r_clip).all()
    assert again.history == first.history and any("heldout_acc" in step for step in again.history)
    with pytest.raises(AssertionError, match="ran again"):  # another setting is another stage
        experiments.cgd_defense(cfg, "badnet", 0.1, progress=False, unlearn_epochs=1, sigma2=0.05)
    with pytest.raises(TypeError, match="unknown CGD setting"):
        experiments.cgd_defense(cfg, "badnet", 0.1, sigma3=0.1)
    with pytest.raises(ValueError, match="unknown guide 'dirty'"):
        experiments.guide_clip(cfg, "dirty")


def test_every_attack_of_the_supervised_suite_poisons_a_victim(small_cfg):
    """The whole suite that chapter 5 can run (the book's build runs a subset): each trigger is made — LF's and
    TrojanNN's optimised against the clean surrogate — and poisons a victim trained on the smoke profile."""
    from clipdef import attacks

    cfg = small_cfg.replace(n_sup_train=120, n_sup_heldout=40)
    for attack in attacks.SUPERVISED:
        victim = experiments.supervised_victim(cfg, attack, 0.1, progress=False)
        poisoned = victim.poisoned_set.poisoned_indices
        assert len(poisoned) > 0, attack
        image, label = victim.poisoned_set[int(poisoned[0])]
        assert label == victim.poisoned_set.target_class, attack
