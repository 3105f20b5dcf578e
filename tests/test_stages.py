"""The stage registry (stages.run: prerequisites first, waves in parallel processes, results in order), the cached
stages themselves and the pre-training's snapshots."""

import dataclasses

import pytest
import torch

from clipdef import data, profiles, stages
from clipdef.stages import cache


@pytest.fixture
def small_cfg():
    return profiles.resolve("smoke", n_pretrain=256, n_finetune=128, n_eval=40, batch_size=64, warmup_steps=2)


TOY_NEEDS = {"c": ("a", "b"), "b": ("a",)}


@stages.base.register
class Toy(stages.Stage):
    """A stage for the registry's tests: it records its builds in a file and needs the toys of TOY_NEEDS."""

    name = "toy"
    label: str

    @property
    def after(self):
        return TOY_NEEDS.get(self.label, ())

    def needs(self, cfg):
        return [Toy(a) for a in self.after]

    def done(self, cfg):
        return (cache.cache_dir() / f"toy-{self.label}").exists()

    def build(self, cfg, progress=True):
        marker = cache.cache_dir() / f"toy-{self.label}"
        if not marker.exists():
            missing = [a for a in self.after if not (cache.cache_dir() / f"toy-{a}").exists()]
            assert not missing, f"{self.label} built before {missing}"
            with open(cache.cache_dir() / "toy-log", "a") as log:
                log.write(self.label + "\n")
            marker.write_text(self.label)
        return self.label


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPDEF_CACHE", str(tmp_path))  # the toys' markers are this test's alone


def test_run_makes_prerequisites_first_each_stage_once_and_returns_what_was_asked_in_order(small_cfg, own_cache):
    asked = [Toy("c"), Toy("b"), Toy("c"), Toy("d")]
    waves = stages.plan(small_cfg, asked)
    assert [sorted(s.label for s, _ in wave) for wave in waves] == [["a", "d"], ["b"], ["c"]]
    assert all(pending for wave in waves for _, pending in wave)
    assert stages.run(small_cfg, asked, workers=1, progress=False) == ["c", "b", "c", "d"]
    built = (cache.cache_dir() / "toy-log").read_text().split()
    assert sorted(built) == ["a", "b", "c", "d"] and built.index("a") < built.index("b") < built.index("c")
    # everything is cached now: nothing is pending, nothing is built again
    assert not any(p for wave in stages.plan(small_cfg, asked) for _, p in wave)
    assert stages.run(small_cfg, asked, workers=1, progress=False) == ["c", "b", "c", "d"]
    assert (cache.cache_dir() / "toy-log").read_text().split() == built


def test_a_done_prerequisite_does_not_delay_its_dependents(small_cfg, own_cache):
    stages.run(small_cfg, [Toy("a")], workers=1, progress=False)
    waves = stages.plan(small_cfg, [Toy("b"), Toy("e")])
    assert [[(s.label, p) for s, p in wave] for wave in waves] == [[("a", False), ("b", True), ("e", True)]]


def test_bad_requests_are_refused(small_cfg):
    with pytest.raises(TypeError, match="stages.run takes stages .* known stages: .*backdoor"):
        stages.run(small_cfg, [("backdoored_clip", {"attack": "badnet"})], workers=1)
    with pytest.raises(TypeError):
        stages.Backdoor("badnet", 0.1, (), "extra")
    assert {"pretrain", "backdoor", "defend", "supervised_victim", "cgd", "spectral_retrain"} <= set(stages.REGISTRY)


def test_stages_are_values_a_stage_asked_for_twice_is_one(small_cfg):
    assert stages.Backdoor("badnet", 0.1) == stages.Backdoor("badnet", 0.1)
    assert stages.Defend.of("sig", "cleanerclip", 0.1, tau_pos=1.0, samples_per_epoch=8) == \
        stages.Defend.of("sig", "cleanerclip", 0.1, samples_per_epoch=8, tau_pos=1.0)
    assert stages.CGD("badnet", 0.1) == stages.CGD("badnet", 0.1, stages.Guide.clean())
    assert len({stages.Backdoor("badnet", 0.1), stages.Backdoor("badnet", 0.1), stages.Backdoor("sig", 0.1)}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        stages.Backdoor("badnet", 0.1).attack = "sig"


def test_run_trains_in_worker_processes_and_then_loads(small_cfg, monkeypatch):
    stages.pretrained_clip(small_cfg, progress=False)  # a shared input, cached before the workers start
    asked = [stages.Backdoor(a, 0.1) for a in ("badnet", "blended")]
    assert [p for s, p in stages.plan(small_cfg, asked)[0] if s in asked] == [True, True]
    victims = stages.run(small_cfg, asked, workers=2, progress=False)
    assert [v.attack for v in victims] == ["badnet", "blended"] and all(v.history is None for v in victims)

    def no_training(*args, **kwargs):
        raise AssertionError("a made stage was trained again")

    monkeypatch.setattr(stages.clip, "train_contrastive", no_training)
    again = stages.run(small_cfg, asked, workers=2, progress=False)
    for a, b in zip(victims, again):
        assert all(torch.equal(x, y) for x, y in zip(a.bundle.model.parameters(), b.bundle.model.parameters()))


def test_workers_default_to_one_per_core_on_the_cpu(small_cfg, monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert stages.workers_for(small_cfg.replace(workers=0, device="cpu")) == 6
    assert stages.workers_for(small_cfg.replace(workers=3)) == 3


def test_snapshots_of_the_pre_training(small_cfg):
    final = stages.pretrained_clip(small_cfg, progress=False)
    early = stages.pretraining_snapshot(small_cfg, 1, progress=False)
    a, b = final.model.state_dict(), early.model.state_dict()
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match=r"after epochs \(1, 2, 3\) \(and before its last, 2\)"):
        stages.pretraining_snapshot(small_cfg, 2)


def test_cgd_defense_is_cached_with_its_scores_split_and_history(small_cfg, monkeypatch):
    from clipdef.defenses import cgd

    cfg = small_cfg.replace(n_sup_train=120, n_sup_heldout=40, cgd={"unlearn_epochs": 1})
    first = stages.cgd_defense(cfg, "badnet", 0.1, progress=False)
    monkeypatch.setattr(cgd, "unlearn", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran again")))
    (again,) = stages.run(cfg, [stages.CGD("badnet", 0.1)], workers=1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()))
    assert (first.split.clean == again.split.clean).all() and (first.scores.r_clip == again.scores.r_clip).all()
    assert again.history == first.history and any("heldout_acc" in step for step in again.history)
    with pytest.raises(AssertionError, match="ran again"):  # another setting is another stage
        stages.cgd_defense(cfg, "badnet", 0.1, settings=cfg.cgd.replace(sigma2=0.05), progress=False)
    with pytest.raises(TypeError, match="CGDSettings has no setting"):
        cfg.cgd.replace(sigma3=0.1)
    with pytest.raises(ValueError, match="unknown guide kind 'dirty'"):
        stages.Guide("dirty")
    with pytest.raises(ValueError, match="a snapshot guide needs epoch"):
        stages.Guide("snapshot")


def test_every_attack_of_the_supervised_suite_poisons_a_victim(small_cfg):
    """The whole suite that chapter 5 can run (the book's build runs a subset): each trigger is made — LF's and
    TrojanNN's optimised against the clean surrogate, Input-Aware's generators trained with its victim — and
    poisons a victim trained on the smoke profile."""
    from clipdef import attacks

    assert set(attacks.JOINTLY_TRAINED) <= set(attacks.SUPERVISED)
    cfg = small_cfg.replace(n_sup_train=120, n_sup_heldout=40)
    for attack in attacks.SUPERVISED:
        victim = stages.supervised_victim(cfg, attack, 0.1, progress=False)
        poisoned = victim.poisoned_set.poisoned_indices
        assert len(poisoned) > 0, attack
        image, label = victim.poisoned_set[int(poisoned[0])]
        assert label == victim.poisoned_set.target_class, attack
        assert stages.PoisonClassifier(attack, 0.1).done(cfg), attack


def test_the_inputaware_victim_is_trained_with_its_generators_and_then_loaded(small_cfg, monkeypatch):
    """IAD's mask network is its own stage; the victim and the pattern network are trained together and cached;
    the poisoned set handed to defenses has cross samples that keep their labels."""
    from clipdef.attacks import inputaware
    from clipdef.stages import supervised

    cfg = small_cfg.replace(n_sup_train=120, n_sup_heldout=40)
    assert stages.PoisonClassifier("inputaware", 0.1).needs(cfg) == [stages.InputAwareMask()]
    (victim,) = stages.run(cfg, [stages.PoisonClassifier("inputaware", 0.1)], workers=1, progress=False)
    settings = supervised.inputaware_settings(cfg)
    assert settings.mask_epochs == 1 and settings.width == 8   # scaled to the smoke victims (1 epoch, width 4)
    view = victim.poisoned_set
    assert len(view.cross_indices) == len(view.poisoned_indices) == 12
    i = int(view.cross_indices[0])
    assert view[i][1] == view.dataset.labels[i]
    assert victim.trigger.generator is not None and victim.steps == 2   # 120 images, batches of 64, one epoch

    def no_training(*args, **kwargs):
        raise AssertionError("a made stage was trained again")

    monkeypatch.setattr(inputaware, "train_inputaware_victim", no_training)
    monkeypatch.setattr(inputaware, "train_mask_generator", no_training)
    again = stages.supervised_victim(cfg, "inputaware", 0.1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(victim.model.state_dict().values(), again.model.state_dict().values()))
    assert cache.trigger_fingerprint(again.trigger) == cache.trigger_fingerprint(victim.trigger)
    with pytest.raises(AssertionError, match="trained again"):  # another rate is another victim (and generator)
        stages.supervised_victim(cfg, "inputaware", 0.2, progress=False)
    with pytest.raises(ValueError, match="trained jointly with its victim"):
        stages.supervised_trigger(cfg, "inputaware")


def test_a_trigger_fingerprint_follows_the_weights_of_its_networks():
    from clipdef import attacks

    trigger = attacks.get("inputaware")
    other = attacks.get("inputaware", seed=1)
    assert cache.trigger_fingerprint(trigger) != cache.trigger_fingerprint(other)
    assert cache.trigger_fingerprint(trigger) == cache.trigger_fingerprint(attacks.get("inputaware"))


def test_a_cache_lock_lets_one_holder_in_at_a_time(own_cache):
    import threading
    import time

    events = []

    def hold(name):
        with cache.held("same-artifact"):
            events.append(("in", name))
            time.sleep(0.2)
            events.append(("out", name))

    threads = [threading.Thread(target=hold, args=(n,)) for n in ("first", "second")]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert [e for e, _ in events] == ["in", "out", "in", "out"]   # never two inside at once

    entered = threading.Event()

    def other_artifact():
        with cache.held("another-artifact"):
            entered.set()

    with cache.held("same-artifact"):
        thread = threading.Thread(target=other_artifact)
        thread.start()
        thread.join(timeout=5)
        assert entered.is_set()   # another artifact's lock does not wait on this one


def test_a_pending_stage_is_made_under_its_lock(small_cfg, own_cache, monkeypatch):
    import fcntl

    locked = []

    def build(self, cfg, progress=True):
        lock = next((cache.cache_dir() / "locks").glob("*.lock"))
        with open(lock) as other:   # a second process asking for the same stage would wait here
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked.append(False)
            except BlockingIOError:
                locked.append(True)
        return self.label

    monkeypatch.setattr(Toy, "build", build)
    assert stages.run(small_cfg, [Toy("z")], workers=1, progress=False) == ["z"]
    assert locked == [True, False]   # made under the lock; loaded for the caller after it was released


def test_ranks_of_a_process_group_make_an_artifact_together_unlocked(own_cache, monkeypatch):
    import clipdef.losses

    monkeypatch.setattr(clipdef.losses, "rank_and_world_size", lambda: (1, 2))
    with cache.held("pretrain"):
        assert not (cache.cache_dir() / "locks").exists()   # rank 0 holds no lock that rank 1 would wait on


def test_classification_accuracy_counts_the_images_the_model_gives_their_label():
    class FirstPixelParity(torch.nn.Module):  # class 1 when the first pixel is odd
        def forward(self, x):
            odd = x[:, 0, 0, 0] % 2
            return torch.stack([1 - odd, odd], 1)

    images = torch.zeros(4, 3, 2, 2)
    images[:, 0, 0, 0] = torch.tensor([0.0, 1.0, 2.0, 3.0])   # predicted 0, 1, 0, 1
    train_set = data.LabelledDataset(images, [0, 1, 1, 1], ("a", "b"))
    assert stages.classification_accuracy(FirstPixelParity(), train_set) == 0.75
    with pytest.raises(ValueError, match="empty"):
        stages.classification_accuracy(FirstPixelParity(), data.LabelledDataset(images[:0], [], ("a", "b")))
