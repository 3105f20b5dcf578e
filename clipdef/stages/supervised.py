"""The supervised stages (chapter 5): labelled training data, the attacker's clean surrogate, the optimised triggers
of the supervised suite, PreAct-ResNet victims trained from scratch on poisoned data (BackdoorBench's protocol), and
the spectral-signature baseline that filters the data and trains again; with the evaluation they share: clean
accuracy (CA), attack success rate (ASR) and robust accuracy (RA).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clipdef import attacks, data, poison
from clipdef.models import load_checkpoint
from clipdef.stages import cache
from clipdef.stages.base import Stage, register


def supervised_target(cfg) -> str:
    """The class the supervised attacks relabel to: ``sup_target``, or the profile's ``target``."""
    return cfg.sup_target or cfg.target


def supervised_config(cfg) -> dict:
    return {**{k: getattr(cfg, k) for k in ("image_size", "n_sup_train", "n_sup_heldout", "sup_width", "sup_epochs",
                                            "sup_lr", "sup_batch_size", "sup_augment", "seed", "cifar10_folder")},
            "target": supervised_target(cfg)}


def classification_data(cfg):
    """(train, held-out, test) labelled sets of the supervised victims: CIFAR-10 when the profile names its binary
    folder (``cifar10_folder``; held-out = the last ``n_sup_heldout`` training images), else the world's
    single-object scenes ('val' split for training and held-out, 'eval' for testing)."""
    if cfg.cifar10_folder:
        folder = cfg.data_path(cfg.cifar10_folder)
        full, test = data.cifar10_binary(folder, "train"), data.cifar10_binary(folder, "test")
        n_train = min(cfg.n_sup_train, len(full) - cfg.n_sup_heldout)
        if n_train < 1:
            raise ValueError(f"{folder} has {len(full)} training images, none left after n_sup_heldout="
                             f"{cfg.n_sup_heldout}")
        split = lambda rows: data.LabelledDataset(full.images[rows], full.labels[rows], full.class_names)
        return split(slice(0, n_train)), split(slice(len(full) - cfg.n_sup_heldout, len(full))), test
    pool = data.load_world("val", cfg.n_sup_train + cfg.n_sup_heldout, seed=cfg.seed, image_size=cfg.image_size)
    images = data.to_float_images(pool.images)
    names = pool.class_names
    train_set = data.LabelledDataset(images[:cfg.n_sup_train], pool.labels[:cfg.n_sup_train], names)
    heldout = data.LabelledDataset(images[cfg.n_sup_train:], pool.labels[cfg.n_sup_train:], names)
    return train_set, heldout, data.world_classification(cfg)


def target_index(cfg, class_names) -> int:
    return list(class_names).index(supervised_target(cfg))


def classifier_path(cfg, name: str, key_extra: dict) -> Path:
    return cache.artifact(cache.MODELS, "preact", name, key=cache.key({**supervised_config(cfg), **key_extra}),
                          suffix=".safetensors")


def victim_augment(cfg):
    """The victims' training augmentation: BackdoorBench's random crop and flip when the profile asks for it
    (``sup_augment``), seeded; else None."""
    from clipdef.train import random_crop_flip

    if not cfg.sup_augment:
        return None
    gen = torch.Generator().manual_seed(cfg.seed)
    return lambda x: random_crop_flip(x, generator=gen)


def train_cached_classifier(cfg, name: str, key_extra: dict, dataset, num_classes: int, progress: bool):
    """A PreAct-ResNet trained from scratch on ``dataset`` with the profile's supervised settings, cached under
    ``name`` and ``key_extra``; returns (model, optimizer steps of its training)."""
    from clipdef.models import PreActResNet
    from clipdef.train import train_classifier

    path = classifier_path(cfg, name, key_extra)
    torch.manual_seed(cfg.seed)
    model = PreActResNet(num_classes, width=cfg.sup_width)
    if path.exists():
        meta = load_checkpoint(model, path)
        return model.eval(), int(meta.get("steps", 0))
    # one epoch of linear warm-up: from scratch, SGD at the profile's rate diverges without it on small batches
    history = train_classifier(model, dataset, epochs=cfg.sup_epochs, lr=cfg.sup_lr, batch_size=cfg.sup_batch_size,
                               seed=cfg.seed, progress=progress, desc=f"train victim ({name})", warmup_epochs=1.0,
                               augment=victim_augment(cfg))
    cache.save_final(model, path, meta={"victim": name, **key_extra, "steps": len(history.steps)})
    return model.eval(), len(history.steps)


def clean_classifier(cfg, progress: bool = True):
    """A classifier trained on the clean labelled set: the attacker's surrogate for LC, LF and TrojanNN."""
    train_set, _, _ = classification_data(cfg)
    return train_cached_classifier(cfg, "clean", {}, train_set, len(train_set.class_names), progress)[0]


@register
class CleanClassifier(Stage):
    """:func:`clean_classifier`."""

    name = "clean_classifier"

    def done(self, cfg) -> bool:
        return classifier_path(cfg, "clean", {}).exists()

    def build(self, cfg, progress: bool = True):
        return clean_classifier(cfg, progress)


# ---------------------------------------------------------------------------------------------------------------
# Triggers of the supervised suite
# ---------------------------------------------------------------------------------------------------------------

def optimised_trigger_path(cfg, name: str) -> Path:
    return cache.artifact(cache.TRIGGERS, name, key=cache.key({**supervised_config(cfg), "trigger": name}),
                          suffix=".safetensors")


def supervised_trigger(cfg, name: str, progress: bool = True):
    """A trigger of the supervised suite; LF's perturbation and TrojanNN's pattern are optimised against the clean
    classifier (the attacker's surrogate) and cached, the others need no model. Input-Aware's generators are
    trained with its victim: its trigger is :func:`inputaware_victim`'s."""
    from safetensors.torch import load_file, save_file

    from clipdef.attacks import optimise
    from clipdef.env import atomic_path

    if name in attacks.JOINTLY_TRAINED:
        raise ValueError(f"the {name!r} trigger is trained jointly with its victim and depends on the poison rate: "
                         f"use stages.supervised_victim(cfg, {name!r}, poison_rate).trigger")
    if name not in attacks.OPTIMISED_SUPERVISED:
        return attacks.get(name, seed=cfg.seed, **attacks.SUPERVISED_PARAMS.get(name, {}))
    path = optimised_trigger_path(cfg, name)
    if path.exists():
        tensor = load_file(str(path))["tensor"]
    else:
        surrogate = clean_classifier(cfg, progress)
        train_set, _, _ = classification_data(cfg)
        images = torch.stack([train_set[i][0] for i in range(min(512, len(train_set)))])
        target = target_index(cfg, train_set.class_names)
        if name == "lf":
            tensor = optimise.optimise_low_frequency_trigger(surrogate, images, target, seed=cfg.seed)
        else:  # BackdoorBench's PreAct-ResNet18 config: the neurons feeding its linear classifier (our ``head``)
            tensor, _ = optimise.optimise_trojannn_trigger(surrogate, surrogate.head, image_size=images.shape[-1])
        with atomic_path(path) as tmp:
            save_file({"tensor": tensor.contiguous()}, str(tmp))
    if name == "lf":
        return attacks.get("lf", perturbation=tensor, seed=cfg.seed)
    return attacks.get("trojannn", pattern=tensor, seed=cfg.seed)


@register
class SupervisedTrigger(Stage):
    """An optimised trigger of the supervised suite (LF, TrojanNN), cached (:func:`supervised_trigger`)."""

    name = "supervised_trigger"
    attack: str

    def needs(self, cfg) -> list[Stage]:
        return [CleanClassifier()]

    def done(self, cfg) -> bool:
        return optimised_trigger_path(cfg, self.attack).exists()

    def build(self, cfg, progress: bool = True):
        return supervised_trigger(cfg, self.attack, progress)


# ---------------------------------------------------------------------------------------------------------------
# Victims
# ---------------------------------------------------------------------------------------------------------------

def effective_rate(attack_trigger, poison_rate: float) -> float:
    """Clean-label attacks poison a share of the target class (:data:`clipdef.attacks.CLEAN_LABEL_RATES`);
    dirty-label ones ``poison_rate`` of the whole set."""
    return attacks.CLEAN_LABEL_RATES.get(attack_trigger.name, poison_rate) if attack_trigger.clean_label \
        else poison_rate


@dataclass
class SupervisedVictim:
    attack: str
    model: torch.nn.Module
    trigger: object
    poisoned_set: object
    steps: int = 0            # optimizer steps of its training


def victim_key_extra(trigger, poison_rate: float) -> dict:
    return {"trigger": cache.trigger_fingerprint(trigger), "rate": poison_rate}


def supervised_victim(cfg, attack: str, poison_rate: float = 0.1, progress: bool = True) -> SupervisedVictim:
    """A PreAct-ResNet trained from scratch on the poisoned labelled set (BackdoorBench's protocol), cached; an
    attack trained jointly with its victim (Input-Aware) is trained as it trains it (:func:`inputaware_victim`)."""
    from clipdef.attacks import optimise

    if attack in attacks.JOINTLY_TRAINED:
        return inputaware_victim(cfg, poison_rate, progress)
    train_set, _, _ = classification_data(cfg)
    trigger = supervised_trigger(cfg, attack, progress)
    target = target_index(cfg, train_set.class_names)
    rate = effective_rate(trigger, poison_rate)
    perturb = None
    if attack in attacks.HARDENED_CLEAN_LABEL:  # make the target images hard first (Turner et al.), on a surrogate
        surrogate = clean_classifier(cfg, progress)
        perturb = lambda x, y: optimise.adversarial_perturb(surrogate, x, y, eps=16 / 255, steps=5)
    poisoned = poison.PoisonedLabels(train_set, trigger, target_class=target, rate=rate, seed=cfg.seed,
                                     perturb_fn=perturb)
    model, steps = train_cached_classifier(cfg, f"victim-{attack}", victim_key_extra(trigger, rate), poisoned,
                                           len(train_set.class_names), progress)
    return SupervisedVictim(attack, model, trigger, poisoned, steps)


@register
class PoisonClassifier(Stage):
    """A supervised victim: a classifier trained from scratch on the labelled set poisoned by ``attack``
    (:func:`supervised_victim`)."""

    name = "supervised_victim"
    attack: str
    poison_rate: float

    def needs(self, cfg) -> list[Stage]:
        if self.attack in attacks.OPTIMISED_SUPERVISED:
            return [SupervisedTrigger(self.attack)]
        if self.attack in attacks.HARDENED_CLEAN_LABEL:
            return [CleanClassifier()]  # the surrogate of the adversarial step
        if self.attack in attacks.JOINTLY_TRAINED:
            return [InputAwareMask()]
        return []

    def done(self, cfg) -> bool:
        if self.attack in attacks.JOINTLY_TRAINED:
            return inputaware_victim_done(cfg, self.poison_rate)
        trigger = supervised_trigger(cfg, self.attack, progress=False)
        return classifier_path(cfg, f"victim-{self.attack}",
                               victim_key_extra(trigger, effective_rate(trigger, self.poison_rate))).exists()

    def build(self, cfg, progress: bool = True) -> SupervisedVictim:
        return supervised_victim(cfg, self.attack, self.poison_rate, progress)


# ---------------------------------------------------------------------------------------------------------------
# Input-Aware (IAD): a mask network trained first, then the victim and the pattern network trained together
# ---------------------------------------------------------------------------------------------------------------

def inputaware_settings(cfg):
    """IAD's settings for the profile (:class:`clipdef.attacks.inputaware.InputAwareSettings`; a profile field
    ``inputaware`` where the profile has one, else BackdoorBench's), with the ``None`` fields scaled to the
    profile's victims: the mask network trains a quarter of ``sup_epochs`` (BackdoorBench: 25 epochs beside 100),
    the generators' first width is 32 · ``sup_width`` / 64, at least 8 (BackdoorBench: 32 beside width 64)."""
    from clipdef.attacks.inputaware import InputAwareSettings

    s = getattr(cfg, "inputaware", None) or InputAwareSettings()
    mask_epochs = max(1, round(cfg.sup_epochs / 4)) if s.mask_epochs is None else s.mask_epochs
    return s.replace(mask_epochs=mask_epochs, width=s.width or max(8, round(32 * cfg.sup_width / 64)))


def _inputaware_config(cfg) -> dict:
    return {**supervised_config(cfg), "inputaware": inputaware_settings(cfg).as_dict()}


def inputaware_mask_path(cfg) -> Path:
    return cache.artifact(cache.MODELS, "inputaware", "mask", key=cache.key(_inputaware_config(cfg)),
                          suffix=".safetensors")


def inputaware_mask(cfg, progress: bool = True) -> torch.nn.Module:
    """IAD's mask network, trained on the clean labelled set (its first phase,
    :func:`clipdef.attacks.inputaware.train_mask_generator`) at the victims' batch size, cached; frozen."""
    from clipdef.attacks.inputaware import InputAwareGenerator, train_mask_generator

    s = inputaware_settings(cfg)
    path = inputaware_mask_path(cfg)
    torch.manual_seed(cfg.seed)
    net = InputAwareGenerator(out_channels=1, width=s.width)
    if path.exists():
        load_checkpoint(net, path)
        return net.eval().requires_grad_(False)
    train_set, _, _ = classification_data(cfg)
    train_mask_generator(net, train_set, s, epochs=s.mask_epochs, batch_size=cfg.sup_batch_size, seed=cfg.seed,
                         augment=victim_augment(cfg), progress=progress)
    cache.save_final(net, path, meta={"attack": "inputaware", "network": "mask", **_inputaware_config(cfg)})
    return net


@register
class InputAwareMask(Stage):
    """:func:`inputaware_mask`."""

    name = "inputaware_mask"

    def done(self, cfg) -> bool:
        return inputaware_mask_path(cfg).exists()

    def build(self, cfg, progress: bool = True):
        return inputaware_mask(cfg, progress)


def _inputaware_paths(cfg, mask_net, poison_rate: float) -> tuple[dict, Path, Path]:
    """The IAD victim's key extras (settings, the mask network's weights, the rate) and the paths of its classifier
    and of its pattern network."""
    from clipdef.env import content_digest

    extra = {"inputaware": inputaware_settings(cfg).as_dict(), "rate": poison_rate,
             "mask": content_digest(*mask_net.state_dict().values())}
    generator = cache.artifact(cache.MODELS, "inputaware", "generator",
                               key=cache.key({**supervised_config(cfg), **extra}), suffix=".safetensors")
    return extra, classifier_path(cfg, "victim-inputaware", extra), generator


def inputaware_victim_done(cfg, poison_rate: float) -> bool:
    if not inputaware_mask_path(cfg).exists():
        return False
    _, classifier, generator = _inputaware_paths(cfg, inputaware_mask(cfg, progress=False), poison_rate)
    return classifier.exists() and generator.exists()


def inputaware_victim(cfg, poison_rate: float = 0.1, progress: bool = True) -> SupervisedVictim:
    """The IAD victim, trained as IAD trains it: the classifier (a PreAct-ResNet of the profile's width) and the
    pattern network jointly, with the profile's victim epochs, rate and batch size, the mask network frozen
    (:func:`clipdef.attacks.inputaware.train_inputaware_victim`). Both networks are cached; the trigger is the
    trained pair, and the poisoned set handed to the defenses is made with it afterwards, as BackdoorBench makes it:
    ``poison_rate`` of the samples (non-target ones) triggered and relabelled, as many cross samples keeping their
    label (:class:`clipdef.poison.CrossPoisonedLabels`)."""
    from clipdef.attacks.inputaware import InputAwareGenerator, train_inputaware_victim
    from clipdef.models import PreActResNet

    s = inputaware_settings(cfg)
    train_set, _, _ = classification_data(cfg)
    target = target_index(cfg, train_set.class_names)
    mask_net = inputaware_mask(cfg, progress)
    extra, model_path, generator_path = _inputaware_paths(cfg, mask_net, poison_rate)
    torch.manual_seed(cfg.seed)
    model = PreActResNet(len(train_set.class_names), width=cfg.sup_width)
    generator = InputAwareGenerator(out_channels=3, width=s.width)
    if model_path.exists() and generator_path.exists():
        steps = int(load_checkpoint(model, model_path).get("steps", 0))
        load_checkpoint(generator, generator_path)
    else:
        history = train_inputaware_victim(model, generator, mask_net, train_set, target, s, epochs=cfg.sup_epochs,
                                          lr=cfg.sup_lr, rate=poison_rate, batch_size=cfg.sup_batch_size,
                                          seed=cfg.seed, augment=victim_augment(cfg), progress=progress)
        steps = len(history.steps)
        meta = {"victim": "victim-inputaware", **extra, "steps": steps}
        cache.save_final(generator, generator_path, meta=meta)
        cache.save_final(model, model_path, meta=meta)  # last: the classifier marks the stage done
    trigger = attacks.get("inputaware", generator=generator.eval(), mask_generator=mask_net, seed=cfg.seed)
    poisoned = poison.CrossPoisonedLabels(train_set, trigger, target_class=target, rate=poison_rate,
                                          cross_rate=poison_rate, seed=cfg.seed)
    return SupervisedVictim("inputaware", model.eval(), trigger, poisoned, steps)


def classification_accuracy(model, labelled) -> float:
    """The share of a labelled set's images that ``model`` gives their label: CA on the test set; on the clean
    training images (true labels, no trigger), how far a victim fits its data (an underfit victim is a weak stand-in
    for the papers')."""
    from clipdef.train import classifier_logits

    if len(labelled) == 0:
        raise ValueError("the labelled set is empty: no accuracy to measure")
    return float((classifier_logits(model, labelled.images).argmax(1) == labelled.labels).float().mean())


def evaluate_classifier(cfg, model, trigger, test=None) -> dict[str, float]:
    """Clean accuracy (CA), attack success rate (ASR), robust accuracy (RA: triggered images, true labels) and the
    share of triggered images given the most frequent prediction."""
    from clipdef.train import classifier_logits

    test = test if test is not None else data.world_classification(cfg)
    target = target_index(cfg, test.class_names)
    ca = classification_accuracy(model, test)
    triggered, true = poison.triggered_eval(test.images, test.labels, trigger, target)
    pred = classifier_logits(model, triggered).argmax(1)
    # the most frequent prediction's share on triggered images: near 1 with ASR near 0 means the backdoor now
    # sends every triggered image to another class (re-targeted), not to its own
    top_share = float(torch.bincount(pred).max()) / len(pred) if len(pred) else 0.0
    return {"ca": ca, "asr": float((pred == target).float().mean()), "ra": float((pred == true).float().mean()),
            "triggered_top_share": top_share}


def retrain_on_subset(cfg, victim: SupervisedVictim, keep, tag: str, progress: bool = True):
    """A classifier trained from scratch on the victim's poisoned set restricted to ``keep`` (cached)."""
    from torch.utils.data import Subset

    keep = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)
    subset = Subset(victim.poisoned_set, keep.tolist())
    return train_cached_classifier(cfg, f"retrain-{victim.attack}-{tag}", _retrain_key_extra(victim, keep),
                                   subset, len(victim.poisoned_set.dataset.class_names), progress)[0]


def _retrain_key_extra(victim: SupervisedVictim, keep: np.ndarray) -> dict:
    return {"trigger": cache.trigger_fingerprint(victim.trigger), "keep": cache.index_digest(keep)}


def spectral_keep(cfg, victim: SupervisedVictim, poison_rate: float, remove_fraction: float | None = None):
    """The spectral-signature filter (Tran et al., 2018): per class, remove the ``remove_fraction`` (default 1.5 ×
    the poison rate, as in the paper) of the victim's training samples with the largest signature on its
    penultimate features; the indices kept."""
    from clipdef.defenses import baselines

    pz = victim.poisoned_set
    images = torch.stack([pz[i][0] for i in range(len(pz))])
    keep = baselines.spectral_filter(victim.model, images, pz.labels.numpy(),
                                     1.5 * poison_rate if remove_fraction is None else remove_fraction)
    return np.flatnonzero(keep)


def spectral_retrain(cfg, attack: str, poison_rate: float = 0.1, remove_fraction: float | None = None,
                     progress: bool = True) -> torch.nn.Module:
    """The spectral-signature baseline: :func:`spectral_keep`, then a new classifier trained from scratch on the
    rest (cached)."""
    victim = supervised_victim(cfg, attack, poison_rate, progress=progress)
    return retrain_on_subset(cfg, victim, spectral_keep(cfg, victim, poison_rate, remove_fraction), "spectral",
                             progress=progress)


@register
class SpectralRetrain(Stage):
    """:func:`spectral_retrain` of the victim of ``attack``."""

    name = "spectral_retrain"
    attack: str
    poison_rate: float

    def needs(self, cfg) -> list[Stage]:
        return [PoisonClassifier(self.attack, self.poison_rate)]

    def done(self, cfg) -> bool:
        victim = supervised_victim(cfg, self.attack, self.poison_rate, progress=False)
        keep = spectral_keep(cfg, victim, self.poison_rate)
        return classifier_path(cfg, f"retrain-{self.attack}-spectral", _retrain_key_extra(victim, keep)).exists()

    def build(self, cfg, progress: bool = True):
        return spectral_retrain(cfg, self.attack, self.poison_rate, progress=progress)
