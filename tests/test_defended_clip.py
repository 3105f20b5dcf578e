"""The cached defense stage of chapter 4: stages.defended_clip trains once, then loads the model and its
per-epoch curve (read from the recorded training history); its key follows the victim, the defense, every loss
parameter and the profile's defense settings; the profile's defense pairs follow the poisoned pool."""

import numpy as np
import pytest
import torch

from clipdef import data, profiles, stages, train
from clipdef.defenses import finetune


def small_cfg(**overrides):
    return profiles.resolve("smoke", **{"n_pretrain": 64, "n_finetune": 64, "n_defense": 48, "n_eval": 60,
                                        "batch_size": 16, "defense_epochs": 2, **overrides})


def counting(tracker, calls):
    def on_epoch_end(epoch, bundle):
        calls.append(epoch)
        return tracker(epoch, bundle)

    return on_epoch_end


def test_defended_clip_trains_once_then_loads_the_model_and_the_same_curve(monkeypatch):
    torch.set_num_threads(1)
    cfg = small_cfg()
    victim = stages.backdoored_clip(cfg, "badnet", 0.05, progress=False)
    tracker = stages.evaluate_each_epoch(cfg, victim.trigger)
    calls = []
    first = stages.defended_clip(cfg, "badnet", "cleanerclip", 0.05, victim=victim, progress=False,
                                      on_epoch_end=counting(tracker, calls), samples_per_epoch=16)
    assert first.trained and calls == [1, 2]
    assert [row["epoch"] for row in first.curve] == [1, 2]
    assert set(first.curve[0]) == {"epoch", *(f"{m}_top{k}" for m in ("ca", "asr") for k in (1, 3, 5, 10))}
    # the curve is in the history: on each epoch's last step
    frame = first.history.frame()
    assert frame["asr_top1"].notna().sum() == 2 and frame["subcaption"].notna().any()
    # the victim is untouched; the last point of the curve is the defended model's
    assert not all(torch.equal(a, b) for a, b in zip(victim.bundle.model.parameters(),
                                                     first.bundle.model.parameters()))
    final = stages.evaluate_victim(cfg, first.bundle, victim.trigger)
    assert {k: v for k, v in first.curve[-1].items() if k != "epoch"} == pytest.approx(final)

    def no_training(*args, **kwargs):
        raise AssertionError("a cached defense was trained again")

    monkeypatch.setattr(train, "train_contrastive", no_training)
    again = stages.defended_clip(cfg, "badnet", "cleanerclip", 0.05, progress=False,
                                      on_epoch_end=counting(tracker, calls), samples_per_epoch=16.0)
    assert not again.trained and calls == [1, 2]  # loaded (the victim too): nothing trained, nothing evaluated
    assert again.curve == first.curve and again.history.steps == first.history.steps
    for a, b in zip(first.bundle.model.state_dict().values(), again.bundle.model.state_dict().values()):
        assert torch.equal(a, b)
    # the curve comes back without asking for it, too
    assert stages.defended_clip(cfg, "badnet", "cleanerclip", 0.05, victim=victim, progress=False,
                                     samples_per_epoch=16).curve == first.curve


def test_a_defense_cached_without_per_epoch_metrics_gives_the_final_epoch_with_a_warning():
    torch.set_num_threads(1)
    cfg = small_cfg(defense_epochs=1)
    victim = stages.backdoored_clip(cfg, "badnet", 0.05, progress=False)
    plain = stages.defended_clip(cfg, "badnet", "ft", 0.05, victim=victim, progress=False)
    assert plain.trained and plain.curve == [] and plain.history.steps
    tracker = stages.evaluate_each_epoch(cfg, victim.trigger)
    with pytest.warns(UserWarning, match="no per-epoch metrics"):
        loaded = stages.defended_clip(cfg, "badnet", "ft", 0.05, victim=victim, progress=False,
                                           on_epoch_end=tracker)
    assert not loaded.trained
    assert loaded.curve == [{"epoch": 1, **stages.evaluate_victim(cfg, plain.bundle, victim.trigger)}]


def test_a_defended_model_depends_on_its_key_not_on_the_callers_rng(monkeypatch, tmp_path):
    torch.set_num_threads(1)
    cfg = small_cfg(defense_epochs=1)
    victim = stages.backdoored_clip(cfg, "badnet", 0.05, progress=False)
    states = []
    for i, cache in enumerate(["a", "b"]):  # two caches: each call trains
        monkeypatch.setenv("CLIPDEF_CACHE", str(tmp_path / cache))
        torch.manual_seed(100 + i)  # what ran before differs (CleanCLIP's AutoAugment uses the global RNG)
        before = torch.random.get_rng_state()
        defended = stages.defended_clip(cfg, "badnet", "cleanclip", 0.05, victim=victim, progress=False)
        assert defended.trained and torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG kept
        states.append(defended.bundle.model.state_dict())
    for name, value in states[0].items():
        assert torch.equal(value, states[1][name]), name


def test_the_key_covers_victim_defense_loss_parameters_and_defense_settings():
    cfg = small_cfg()
    victim = stages.Victim("badnet", 0.05, None, None, None, key="victim-a")
    prefix = lambda c=cfg, v=victim, method="cleanerclip", clean_set=None, **p: \
        stages.clip.defense_prefix(c, v, method, clean_set, **p)
    main = prefix(samples_per_epoch=64)
    # the same settings, however they are spelled: defaults left out or given, 1 for 1.0
    assert prefix(samples_per_epoch=64, tau_pos=0.3, subcaption_weight=1) == main
    assert prefix(samples_per_epoch=64.0) == main
    others = [prefix(samples_per_epoch=16), prefix(samples_per_epoch=64, tau_pos=1.0),
              prefix(samples_per_epoch=64, tau_neg=1.0), prefix(samples_per_epoch=64, subcaption_weight=3.0),
              prefix(samples_per_epoch=64, negatives=4), prefix(method="cleanclip"), prefix(method="ft"),
              prefix(v=stages.Victim("badnet", 0.05, None, None, None, key="victim-b"), samples_per_epoch=64)]
    others += [prefix(c=small_cfg(**{name: value}), samples_per_epoch=64) for name, value in
               [("defense_epochs", 3), ("defense_lr", 1e-3), ("defense_batch_size", 32), ("weight_decay", 0.0),
                ("defense_warmup_steps", 1), ("n_defense", 32), ("seed", 1)]]
    given = data.PairDataset(torch.zeros(4, 3, 8, 8), ["a cat", "a dog", "a red cube", "a ball"])
    others += [prefix(clean_set=given, samples_per_epoch=64)]
    assert len({main, *others}) == len(others) + 1
    assert prefix(clean_set=given, samples_per_epoch=64) == prefix(
        clean_set=data.PairDataset(given.images.clone(), list(given.captions)), samples_per_epoch=64)
    assert main.name.startswith(f"{cfg.model}-defense-cleanerclip-badnet-")
    with pytest.raises(TypeError, match="no loss parameter"):
        prefix(samples_per_epoch=64, tau=0.1)
    with pytest.raises(TypeError, match="FT takes no loss parameters"):
        prefix(method="ft", samples_per_epoch=64)
    with pytest.raises(ValueError, match="valid: ft, cleanclip, cleanerclip"):
        prefix(method="fineprune")


def test_loss_settings_fill_in_the_defaults():
    assert finetune.loss_settings("ft") == {}
    assert finetune.loss_settings("cleanclip") == {"clip_weight": 1.0, "inmodal_weight": 1.0}
    settings = finetune.loss_settings("cleanerclip", samples_per_epoch=64.0, tau_neg=1)
    assert settings["samples_per_epoch"] == 64 and isinstance(settings["samples_per_epoch"], int)
    assert settings["tau_neg"] == 1.0 and isinstance(settings["tau_neg"], float)
    assert settings["tau_pos"] == 0.3 and settings["negatives"] == 1


def test_the_profiles_defense_pairs_follow_the_poisoned_pool():
    cfg = small_cfg()
    defense, pool = data.defense_pairs(cfg, progress=False), data.finetune_pairs(cfg, progress=False)
    both = data.world_pairs(cfg, "finetune", n=cfg.n_finetune + cfg.n_defense)
    assert len(defense) == cfg.n_defense
    assert torch.equal(both.images[:cfg.n_finetune], pool.images)  # the attacker's pairs come first ...
    assert torch.equal(both.images[cfg.n_finetune:], defense.images)  # ... the defender's are the next ones
    assert defense.captions == both.captions[cfg.n_finetune:]


def test_the_defense_pairs_of_a_csv_are_the_rows_after_the_fine_tuning_rows(tmp_path):
    from PIL import Image

    rows = ["filepath,caption"]
    for i in range(7):
        Image.fromarray(np.full((8, 8, 3), 30 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,caption {i}")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows.append("broken.png,caption broken")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    cfg = profiles.resolve("smoke", data="files", finetune_csv=str(tmp_path / "pairs.csv"), n_finetune=4,
                           n_defense=3, image_size=8)
    pool = data.finetune_pairs(cfg, progress=False)
    with pytest.raises(Exception, match="unreadable|broken|bad"):  # 1 broken image of 4 exceeds the 1 % allowed
        data.defense_pairs(cfg.replace(n_defense=4), progress=False)
    defense = data.defense_pairs(cfg, progress=False)
    assert pool.captions == [f"caption {i}" for i in range(4)]
    assert defense.captions == ["caption 4", "caption 5", "caption 6"]
    image, caption = defense[0]
    assert caption == "caption 4" and image.shape == (3, 8, 8)
