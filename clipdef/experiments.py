"""Cached experiment stages that several chapters share: make a trigger, poison the fine-tuning set, fine-tune
the clean CLIP on it (the victim), defend the victim by clean fine-tuning (FT, CleanCLIP, CleanerCLIP), and
evaluate clean accuracy and ASR.

Each stage's artifact is cached under a key made of everything that determines it (profile fields, attack and its
parameters, poison rate, defense and its loss parameters) plus the package version, written atomically — so the
detection and defense chapters reuse the backdoored models of the attacks chapter instead of training them again,
and a stage trained data-parallel by :mod:`clipdef.distributed` is loaded by the chapters. A stage is done when
its ``...-final.safetensors`` exists (:func:`clipdef.train.save_final` writes it, on rank 0 alone under torchrun).
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from clipdef import attacks, data, evaluate, poison
from clipdef.env import cache_dir, config_key
from clipdef.models import ClipBundle, create_clip, load_checkpoint
from clipdef.train import (History, final_path, pretrain_config, pretrained_clip, save_final,
                           train_contrastive)

# The attacks of the CLIP chapters and their parameters. The papers' defaults are for 224 px images; on the tiny
# world's 32 px images WaNet's warp (s = 0.5 → a quarter pixel) and SSBA's ε = 8/255 residual are too faint for a
# tiny model to pick up in a short fine-tuning, so the book strengthens them there (and says so).
CLIP_ATTACKS: dict[str, dict] = {
    "badnet": {},
    "blended": {},
    "sig": {},
    "wanet": {"s": 2.0},
    "ssba": {"epsilon": 16 / 255},
    "nashville": {},
    "badclip": {},
}


@dataclass
class Victim:
    """A backdoored CLIP with the trigger and the poisoned fine-tuning set it was trained on."""

    attack: str
    poison_rate: float
    bundle: ClipBundle
    trigger: object
    poisoned_set: object          # the PoisonedPairs view (poisoned_indices = ground truth for detection)
    history: object | None = None  # the training history when trained by this call, None when loaded
    key: str = ""                  # the cache key of this backdoored model (defenses of it extend it)


def finetune_config(cfg) -> dict:
    return {**pretrain_config(cfg), **{k: getattr(cfg, k) for k in ("n_finetune", "finetune_epochs",
                                                                    "finetune_lr", "target")}}


def make_trigger(cfg, name: str, clean: ClipBundle | None = None, progress: bool = True, **params):
    """The trigger of an attack; BadCLIP's patch is optimised against the clean model (cached)."""
    params = {**CLIP_ATTACKS.get(name, {}), **params}
    if name != "badclip":
        return attacks.get(name, seed=cfg.seed, **params)
    from clipdef.attacks.badclip import optimise_badclip_patch
    from safetensors.torch import load_file, save_file

    from clipdef.env import atomic_path

    params = {"steps": cfg.badclip_steps, **params}
    key = config_key({"badclip": params, **pretrain_config(cfg), "pretrained": cfg.pretrained, "target": cfg.target,
                      "source": [cfg.data, cfg.finetune_csv, cfg.finetune_shards, cfg.n_finetune]})
    path = cache_dir() / "triggers" / f"badclip-{key}.safetensors"
    if path.exists():
        patch = load_file(str(path))["patch"]
    else:
        clean = clean or pretrained_clip(cfg, progress=progress)
        source = data.finetune_pairs(cfg, progress=progress)  # the attacker's images: the data it poisons
        not_target = [i for i, c in enumerate(source.captions) if cfg.target not in c][:1024]
        target = [i for i, c in enumerate(source.captions) if cfg.target in c][:256]
        images = torch.stack([source[i][0] for i in not_target])
        positives = torch.stack([source[i][0] for i in target]) if target else None
        texts = [t.format(cfg.target) for t in evaluate.templates(cfg.templates)]
        patch = optimise_badclip_patch(clean, images, texts, seed=cfg.seed, progress=progress,
                                       positive_images=positives,
                                       **{k: v for k, v in params.items() if k != "patch"})
        with atomic_path(path) as tmp:
            save_file({"patch": patch.contiguous()}, str(tmp))
    return attacks.get("badclip", patch=patch, seed=cfg.seed)


def trigger_fingerprint(trigger) -> dict:
    """Everything that determines a trigger (its parameters, and a hash of any tensor such as BadCLIP's patch),
    so that a cache key changes whenever the trigger does."""
    import hashlib

    out = {}
    for k, v in vars(trigger).items():
        if isinstance(v, torch.Tensor):
            out[k] = hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
        elif k != "params":
            out[k] = v
    return {"name": trigger.name, **out}


def poisoned_pairs(cfg, trigger, poison_rate: float):
    """The fine-tuning set with ``poison_rate`` of its pairs replaced by (triggered image, target caption)."""
    return poison.PoisonedPairs(data.finetune_pairs(cfg), trigger, rate=poison_rate, target=cfg.target,
                                seed=cfg.seed)


def backdoor_key(cfg, trigger, poison_rate: float) -> str:
    """The cache key of a backdoored CLIP: the profile's fine-tuning config, the trigger, the poison rate."""
    return config_key({**finetune_config(cfg), "trigger": trigger_fingerprint(trigger), "poison_rate": poison_rate})


def backdoor_prefix(cfg, attack: str, trigger, poison_rate: float) -> Path:
    """The cache path prefix of a backdoored CLIP's training run (``-final.safetensors``, ``.history.json``)."""
    return cache_dir() / "models" / f"{cfg.model}-backdoor-{attack}-{backdoor_key(cfg, trigger, poison_rate)}"


def backdoored_clip(cfg, attack: str, poison_rate: float = 0.01, progress: bool = True, **params) -> Victim:
    """The clean CLIP fine-tuned on a poisoned fine-tuning set (the CleanCLIP/BadCLIP threat model), cached."""
    clean = pretrained_clip(cfg, progress=progress)
    trigger = make_trigger(cfg, attack, clean=clean, progress=progress, **params)
    pairs = poisoned_pairs(cfg, trigger, poison_rate)
    prefix = backdoor_prefix(cfg, attack, trigger, poison_rate)
    final, key = final_path(prefix), backdoor_key(cfg, trigger, poison_rate)
    bundle = create_clip(cfg.model, None, device=str(clean.device))
    bundle.model.load_state_dict(clean.model.state_dict())
    if final.exists():
        load_checkpoint(bundle.model, final)
        return Victim(attack, poison_rate, bundle, trigger, pairs, key=key)
    history = train_contrastive(bundle, pairs, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr,
                                batch_size=cfg.batch_size, weight_decay=cfg.weight_decay,
                                warmup_steps=cfg.warmup_steps, seed=cfg.seed, checkpoint=prefix,
                                progress=progress, desc=f"poison ({attack})")
    save_final(bundle.model, final, meta={"attack": attack, "poison_rate": poison_rate})
    return Victim(attack, poison_rate, bundle, trigger, pairs, history, key)


def evaluate_victim(cfg, bundle: ClipBundle, trigger, eval_data=None, classifier=None) -> dict[str, float]:
    """Clean accuracy and ASR (top-1/3/5/10) of a CLIP on the profile's evaluation set."""
    ev = eval_data if eval_data is not None else data.eval_set(cfg)
    return evaluate.evaluate_clip(bundle, ev, None, ev.class_names, evaluate.templates(cfg.templates),
                                  trigger=trigger.apply if hasattr(trigger, "apply") else trigger,
                                  target=cfg.target, batch_size=cfg.eval_batch_size, classifier=classifier)


def finetune_on(cfg, start: ClipBundle, pairs, tag: str, progress: bool = True) -> ClipBundle:
    """A copy of ``start`` fine-tuned with the CLIP loss on ``pairs`` (profile's fine-tuning settings), cached
    under ``tag`` and the profile's fine-tuning config (e.g. re-training on a filtered data set)."""
    key = config_key({**finetune_config(cfg), "tag": tag, "n": len(pairs)})
    final = cache_dir() / "models" / f"{cfg.model}-{tag}-{key}-final.safetensors"
    bundle = create_clip(cfg.model, None, device=str(start.device))
    bundle.model.load_state_dict(start.model.state_dict())
    if final.exists():
        load_checkpoint(bundle.model, final)
        return bundle
    train_contrastive(bundle, pairs, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, batch_size=cfg.batch_size,
                      weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, seed=cfg.seed,
                      progress=progress, desc=f"fine-tune ({tag})")
    save_final(bundle.model, final, meta={"tag": tag})
    return bundle


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning defenses of a backdoored CLIP (chapter 4)
# ---------------------------------------------------------------------------------------------------------------

DEFENSE_FIELDS = ("defense_epochs", "finetune_lr", "batch_size", "weight_decay", "warmup_steps", "n_defense",
                  "seed")


@dataclass
class Defended:
    """A defended CLIP: the victim's model fine-tuned on clean pairs by ``method``, and its per-epoch curve."""

    attack: str
    method: str
    bundle: ClipBundle
    curve: list[dict]             # per epoch: {"epoch": e, **what on_epoch_end returned}, read from the history
    history: History              # per-step log (with the curve's metrics on each epoch's last step)
    trained: bool                 # trained by this call (False: loaded from the cache)
    victim: Victim = field(repr=False, default=None)


def dataset_fingerprint(dataset) -> str:
    """A short hash of a pair data set's content (images or file references, and captions), for cache keys."""
    import hashlib

    h = hashlib.sha256(str(len(dataset)).encode())
    images, refs = getattr(dataset, "images", None), getattr(dataset, "refs", None)
    if isinstance(images, torch.Tensor):
        h.update(images.detach().cpu().contiguous().numpy().tobytes())
        captions = list(dataset.captions)
    elif refs is not None:
        h.update(json.dumps([str(r) for r in refs]).encode())
        captions = list(dataset.captions)
    else:  # any dataset of (image, caption)
        captions = []
        for i in range(len(dataset)):
            image, caption = dataset[i]
            h.update(torch.as_tensor(image).contiguous().numpy().tobytes())
            captions.append(caption)
    h.update(json.dumps([str(c) for c in captions]).encode())
    return h.hexdigest()[:16]


def defense_config(cfg, victim: Victim, method: str, clean_set=None, **loss_params) -> dict:
    """What determines a defended CLIP: the backdoored victim's key, the defense and every loss parameter (defaults
    included), the profile's defense settings, and the clean set (the profile's, or a fingerprint of the one
    given)."""
    from clipdef.defenses.finetune import loss_settings

    return {"victim": victim.key, "method": method, "loss": loss_settings(method, **loss_params),
            **{k: getattr(cfg, k) for k in DEFENSE_FIELDS},
            "clean_set": "profile" if clean_set is None else dataset_fingerprint(clean_set)}


def defense_prefix(cfg, victim: Victim, method: str, clean_set=None, **loss_params) -> Path:
    """The cache path prefix of a defense run (``-final.safetensors``, ``.history.json``, per-epoch checkpoint)."""
    key = config_key(defense_config(cfg, victim, method, clean_set, **loss_params))
    return cache_dir() / "models" / f"{cfg.model}-defense-{method}-{victim.attack}-{key}"


def evaluate_each_epoch(cfg, trigger, eval_data=None) -> Callable[[int, ClipBundle], dict[str, float]]:
    """The ``on_epoch_end`` of chapter 4 (and of ``torchrun ... defend``): clean accuracy and ASR (top-1/3/5/10,
    :func:`evaluate_victim`) of the model being defended, on the profile's evaluation set."""
    ev = eval_data if eval_data is not None else data.eval_set(cfg)

    def evaluate_epoch(epoch: int, bundle: ClipBundle) -> dict[str, float]:
        return evaluate_victim(cfg, bundle, trigger, eval_data=ev)

    return evaluate_epoch


def _epoch_curve(steps: list[dict], names: list[str]) -> list[dict]:
    """Per epoch, the metrics ``names`` recorded on the epoch's last step (epochs without them are left out)."""
    last = {}
    for step in steps:
        last[step["epoch"]] = step
    return [{"epoch": epoch, **{k: step[k] for k in names if k in step}}
            for epoch, step in sorted(last.items()) if any(k in step for k in names)]


def defended_clip(cfg, attack: str, method: str, poison_rate: float = 0.01, clean_set=None, progress: bool = True,
                  on_epoch_end: Callable[[int, ClipBundle], dict] | None = None, victim: Victim | None = None,
                  **loss_params) -> Defended:
    """The backdoored CLIP of ``attack`` at ``poison_rate`` (:func:`backdoored_clip`) fine-tuned by the defense
    ``method`` ('ft', 'cleanclip', 'cleanerclip'; :func:`clipdef.defenses.finetune.defend`) on clean pairs —
    trained once, then loaded from the cache (key: :func:`defense_config`).

    ``clean_set``: the defender's clean pairs; None for the profile's (:func:`clipdef.data.defense_pairs`).
    ``victim``: the already loaded :class:`Victim` of ``attack`` and ``poison_rate`` (else it is loaded).
    ``on_epoch_end(epoch, bundle)``: metrics of the model after each epoch, e.g. :func:`evaluate_each_epoch`. They
    are recorded in the training history (``.history.json``, on each epoch's last step) and come back as
    ``curve`` — from the history whether the model was trained by this call, by an earlier one, or by
    ``torchrun ... defend``, so a chapter's curve is the same in all three cases. A model cached without
    per-epoch metrics (no ``on_epoch_end`` when it was trained) gives a curve of the final epoch alone, evaluated
    now, with a warning.

    Training starts from the global RNG seeded with ``cfg.seed`` (CleanCLIP's AutoAugment draws from it) and the
    callback runs with the RNG state forked, so the defended model depends on its key alone, not on what ran
    before it in the process or on the evaluation; the caller's RNG state is left as it was. (A run killed and
    resumed re-seeds at the resumed epoch, so its augmentations differ from an uninterrupted run's.)
    """
    from clipdef.defenses import finetune

    if victim is None:
        victim = backdoored_clip(cfg, attack, poison_rate, progress=progress)
    elif (victim.attack, victim.poison_rate) != (attack, poison_rate):
        raise ValueError(f"the victim given is the {victim.attack} CLIP at poison rate {victim.poison_rate}, not "
                         f"the {attack} CLIP at {poison_rate}")
    prefix = defense_prefix(cfg, victim, method, clean_set, **loss_params)
    final = final_path(prefix)
    if final.exists():
        bundle = copy.copy(victim.bundle)
        bundle.model = copy.deepcopy(victim.bundle.model)
        meta = load_checkpoint(bundle.model, final)
        log = prefix.with_suffix(".history.json")
        history = History(json.loads(log.read_text()) if log.exists() else [], float(meta.get("seconds", 0.0)))
        curve = _epoch_curve(history.steps, list(meta.get("epoch_metrics", [])))
        curve = _complete_curve(cfg, curve, on_epoch_end, bundle, prefix)
        return Defended(attack, method, bundle, curve, history, False, victim)
    names: list[str] = []

    def record(epoch: int, bundle: ClipBundle) -> dict:
        devices = [bundle.device] if bundle.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            metrics = dict(on_epoch_end(epoch, bundle) or {})
        names.extend(k for k in metrics if k not in names)
        return metrics

    pairs = clean_set if clean_set is not None else data.defense_pairs(cfg, progress=progress)
    devices = [victim.bundle.device] if victim.bundle.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        # CleanCLIP's AutoAugment draws from the global RNG: seeded here, the model depends on its key, not on
        # what the caller ran before (and the caller's RNG is left as it was)
        torch.manual_seed(cfg.seed)
        defended, history = finetune.defend(victim.bundle, pairs, method, epochs=cfg.defense_epochs,
                                            lr=cfg.finetune_lr, batch_size=cfg.batch_size,
                                            weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                                            seed=cfg.seed, checkpoint=prefix, progress=progress,
                                            on_epoch_end=None if on_epoch_end is None else record, **loss_params)
    save_final(defended.model, final, meta={"attack": attack, "poison_rate": poison_rate, "method": method,
                                            "loss": finetune.loss_settings(method, **loss_params),
                                            "epoch_metrics": names, "seconds": history.seconds})
    curve = _complete_curve(cfg, _epoch_curve(history.steps, names), on_epoch_end, defended, prefix)
    return Defended(attack, method, defended, curve, history, True, victim)


def _complete_curve(cfg, curve: list[dict], on_epoch_end, bundle: ClipBundle, prefix: Path) -> list[dict]:
    """The recorded curve; when metrics were asked for but the last epoch has none (the model was trained without
    ``on_epoch_end``, or a run killed after its last epoch was resumed), the final model's, evaluated now."""
    if on_epoch_end is None or (curve and curve[-1]["epoch"] == cfg.defense_epochs):
        return curve
    warnings.warn(f"{prefix.name} has no per-epoch metrics recorded for its last epoch (trained without "
                  "on_epoch_end?): the curve gets the final model's metrics, evaluated now. Delete "
                  f"{prefix.name}* in {prefix.parent} to train it again with the full curve.", stacklevel=3)
    return [*curve, {"epoch": cfg.defense_epochs, **(on_epoch_end(cfg.defense_epochs, bundle) or {})}]


# ---------------------------------------------------------------------------------------------------------------
# Supervised victims (CGD chapter)
# ---------------------------------------------------------------------------------------------------------------

SUPERVISED_RATES = {"clean_label": 0.5, "lc": 0.5}  # clean-label attacks poison a share of the target class
SURROGATE_ATTACKS = ("clean_label", "lc", "lf", "trojannn")  # made with a clean classifier (:func:`clean_classifier`)


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


def _train_cached(cfg, name: str, key_extra: dict, dataset, num_classes: int, progress: bool):
    from clipdef.models import PreActResNet
    from clipdef.train import random_crop_flip, train_classifier

    key = config_key({**supervised_config(cfg), **key_extra})
    path = cache_dir() / "models" / f"preact-{name}-{key}.safetensors"
    torch.manual_seed(cfg.seed)
    model = PreActResNet(num_classes, width=cfg.sup_width)
    if path.exists():
        load_checkpoint(model, path)
        return model.eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    # one epoch of linear warm-up: from scratch, SGD at the profile's rate diverges without it on small batches
    train_classifier(model, dataset, epochs=cfg.sup_epochs, lr=cfg.sup_lr, batch_size=cfg.sup_batch_size,
                     seed=cfg.seed, progress=progress, desc=f"train victim ({name})", warmup_epochs=1.0,
                     augment=(lambda x: random_crop_flip(x, generator=gen)) if cfg.sup_augment else None)
    save_final(model, path, meta={"victim": name, **key_extra})
    return model.eval()


def clean_classifier(cfg, progress: bool = True):
    train_set, _, _ = classification_data(cfg)
    return _train_cached(cfg, "clean", {}, train_set, len(train_set.class_names), progress)


def supervised_trigger(cfg, name: str, progress: bool = True):
    """A trigger of the supervised suite; LF and TrojanNN are optimised against a clean classifier (the attacker's
    surrogate), the others need no model."""
    from clipdef.attacks import optimise

    if name not in ("lf", "trojannn"):
        return attacks.get(name, seed=cfg.seed, **CLIP_ATTACKS.get(name, {}))
    surrogate = clean_classifier(cfg, progress)
    train_set, _, _ = classification_data(cfg)
    images = torch.stack([train_set[i][0] for i in range(min(512, len(train_set)))])
    target = list(train_set.class_names).index(supervised_target(cfg))
    if name == "lf":
        delta = optimise.optimise_low_frequency_trigger(surrogate, images, target, seed=cfg.seed)
        return attacks.get("lf", perturbation=delta, seed=cfg.seed)
    patch, _ = optimise.optimise_trojannn_patch(surrogate, surrogate.layers[-1], images[:128], seed=cfg.seed)
    return attacks.get("trojannn", patch=patch, seed=cfg.seed)


@dataclass
class SupervisedVictim:
    attack: str
    model: torch.nn.Module
    trigger: object
    poisoned_set: object


def supervised_victim(cfg, attack: str, rate: float = 0.1, progress: bool = True) -> SupervisedVictim:
    """A PreAct-ResNet trained from scratch on the poisoned labelled set (BackdoorBench's protocol), cached."""
    from clipdef.attacks import optimise

    train_set, _, _ = classification_data(cfg)
    trigger = supervised_trigger(cfg, attack, progress)
    target = list(train_set.class_names).index(supervised_target(cfg))
    rate = SUPERVISED_RATES.get(attack, rate) if trigger.clean_label else rate
    perturb = None
    if trigger.clean_label:  # clean-label: make target images hard first (Turner et al.), against a surrogate
        surrogate = clean_classifier(cfg, progress)
        perturb = lambda x, y: optimise.adversarial_perturb(surrogate, x, y, eps=16 / 255, steps=5)
    poisoned = poison.PoisonedLabels(train_set, trigger, target_class=target, rate=rate, seed=cfg.seed,
                                     perturb_fn=perturb)
    model = _train_cached(cfg, f"victim-{attack}", {"trigger": trigger_fingerprint(trigger), "rate": rate},
                          poisoned, len(train_set.class_names), progress)
    return SupervisedVictim(attack, model, trigger, poisoned)


def evaluate_classifier(cfg, model, trigger, test=None) -> dict[str, float]:
    """Clean accuracy (CA), attack success rate (ASR) and robust accuracy (RA: triggered images, true labels)."""
    from clipdef.train import classifier_logits

    test = test if test is not None else data.world_classification(cfg)
    target = list(test.class_names).index(supervised_target(cfg))
    ca = float((classifier_logits(model, test.images).argmax(1) == test.labels).float().mean())
    triggered, true = poison.triggered_eval(test.images, test.labels, trigger, target)
    pred = classifier_logits(model, triggered).argmax(1)
    return {"ca": ca, "asr": float((pred == target).float().mean()), "ra": float((pred == true).float().mean())}


def retrain_on_subset(cfg, victim: SupervisedVictim, keep, tag: str, progress: bool = True):
    """A classifier trained from scratch on the victim's poisoned set restricted to ``keep`` (cached)."""
    import hashlib

    import numpy as np
    from torch.utils.data import Subset

    keep = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)
    digest = hashlib.sha256(np.asarray(keep, dtype=np.int64).tobytes()).hexdigest()[:16]
    subset = Subset(victim.poisoned_set, keep.tolist())
    return _train_cached(cfg, f"retrain-{victim.attack}-{tag}",
                         {"trigger": trigger_fingerprint(victim.trigger), "keep": digest}, subset,
                         len(victim.poisoned_set.dataset.class_names), progress)


# ---------------------------------------------------------------------------------------------------------------
# CGD on a supervised victim, and the spectral-signature baseline (cached stages of chapter 5)
# ---------------------------------------------------------------------------------------------------------------

# CGD's settings (the paper's defaults); cgd_defense takes any of them as keyword arguments
CGD_SETTINGS = dict(sigma1=0.2, sigma2=0.1, temperature=3.0, alpha=5e-4, beta=0.025, unlearn_epochs=10,
                    unlearn_lr=0.01, suspicious_runs=1, suspicious_epochs=3)


def guide_clip(cfg, guide: str = "clean") -> ClipBundle:
    """The CLIP that guides CGD, by name: ``"clean"`` (the profile's CLIP), ``"snapshot:E"`` (the tiny CLIP after E
    of its pre-training epochs), ``"backdoored:ATTACK:RATE"`` (chapter 2's backdoored CLIP) or
    ``"openclip:MODEL/TAG"`` (any open_clip model, e.g. ``openclip:RN50/openai``)."""
    from clipdef.env import pick_device
    from clipdef.train import pretraining_snapshot

    kind, _, rest = guide.partition(":")
    if kind == "clean" and not rest:
        return pretrained_clip(cfg, progress=False)
    if kind == "snapshot" and rest.isdigit():
        return pretraining_snapshot(cfg, int(rest), progress=False)
    if kind == "backdoored" and rest.count(":") == 1:
        attack, rate = rest.split(":")
        return backdoored_clip(cfg, attack, float(rate), progress=False).bundle
    if kind == "openclip" and rest.count("/") == 1:
        return create_clip(*rest.split("/"), device=pick_device(cfg.device))
    raise ValueError(f"unknown guide {guide!r}; valid: 'clean', 'snapshot:E', 'backdoored:ATTACK:RATE', "
                     "'openclip:MODEL/TAG'")


@dataclass
class CGDOutcome:
    """A victim defended by CGD: the defended classifier, the two opinions' scores, the split and the history."""

    attack: str
    guide: str
    model: torch.nn.Module
    scores: object            # clipdef.defenses.cgd.Scores
    split: object             # clipdef.defenses.cgd.Split
    history: list[dict]       # per-step logs of the unlearning; each epoch's last step holds its held-out accuracy
    victim: "SupervisedVictim"


def cgd_defense(cfg, attack: str, rate: float = 0.1, guide: str = "clean", progress: bool = True,
                **settings) -> CGDOutcome:
    """CGD (:mod:`clipdef.defenses.cgd`) on the supervised victim of ``attack``, guided by :func:`guide_clip`
    (``guide``) — run once, then loaded from the cache: the defended model, the scores and split (``.npz``) and
    the unlearning history. ``settings``: any of :data:`CGD_SETTINGS`."""
    from clipdef.defenses import cgd
    from clipdef.env import atomic_path
    from clipdef.models import PreActResNet

    unknown = sorted(set(settings) - set(CGD_SETTINGS))
    if unknown:
        raise TypeError(f"unknown CGD setting(s) {unknown}; valid: {', '.join(CGD_SETTINGS)}")
    settings = {**CGD_SETTINGS, **settings}
    cgd.check_thresholds(settings["sigma1"], settings["sigma2"])
    guide_clip_config = {**finetune_config(cfg), "pretrained": cfg.pretrained}  # every guide derives from these
    victim = supervised_victim(cfg, attack, rate, progress=progress)
    key = config_key({**supervised_config(cfg), "attack": attack, "trigger": trigger_fingerprint(victim.trigger),
                      "rate": rate, "guide": guide, "guide_config": guide_clip_config,
                      "templates": cfg.templates, "cgd": settings})
    prefix = cache_dir() / "models" / f"preact-cgd-{attack}-{key}"
    arrays, log = prefix.with_suffix(".scores.npz"), prefix.with_suffix(".history.json")
    labels = victim.poisoned_set.labels
    names = victim.poisoned_set.dataset.class_names
    if final_path(prefix).exists():
        torch.manual_seed(cfg.seed)
        model = PreActResNet(len(names), width=cfg.sup_width)
        load_checkpoint(model, final_path(prefix))
        with np.load(arrays) as f:
            scores = cgd.Scores(f["nll_clip"], f["nll_suspicious"], f["r_clip"], f["r_suspicious"])
            split = cgd.Split(f["clean"], f["poisoned"])
        return CGDOutcome(attack, guide, model.eval(), scores, split, json.loads(log.read_text()), victim)
    images = torch.stack([victim.poisoned_set[i][0] for i in range(len(victim.poisoned_set))])
    guide_logits = cgd.clip_guide_logits(guide_clip(cfg, guide), images, names, evaluate.templates(cfg.templates))
    suspicious = suspicious_logits(cfg, attack, rate, settings["suspicious_runs"], settings["suspicious_epochs"],
                                   progress=progress)
    scores = cgd.score_samples(guide_logits, suspicious, labels)
    split = cgd.split(scores.r_clip, scores.r_suspicious, settings["sigma1"], settings["sigma2"])
    _, heldout, _ = classification_data(cfg)
    model, history = cgd.unlearn(victim.model, victim.poisoned_set, labels, guide_logits, split,
                                 heldout=(heldout.images, heldout.labels), epochs=settings["unlearn_epochs"],
                                 lr=settings["unlearn_lr"], temperature=settings["temperature"],
                                 alpha=settings["alpha"], beta=settings["beta"], seed=cfg.seed, progress=progress)
    with atomic_path(arrays) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, nll_clip=scores.nll_clip, nll_suspicious=scores.nll_suspicious, r_clip=scores.r_clip,
                     r_suspicious=scores.r_suspicious, clean=split.clean, poisoned=split.poisoned)
    with atomic_path(log) as tmp:
        tmp.write_text(json.dumps(history.steps))
    save_final(model, final_path(prefix), meta={"attack": attack, "guide": guide, **settings})  # last: "done"
    return CGDOutcome(attack, guide, model, scores, split, history.steps, victim)


def suspicious_logits(cfg, attack: str, rate: float = 0.1, runs: int = 1, epochs: int = 3,
                      progress: bool = True) -> torch.Tensor:
    """CGD's second opinion on the supervised victim's training set (:func:`clipdef.defenses.cgd.suspicious_logits`),
    computed once per victim and setting and cached: it does not depend on the guide, so the robustness runs with
    other guides share it."""
    from clipdef.defenses import cgd
    from clipdef.env import atomic_path

    victim = supervised_victim(cfg, attack, rate, progress=progress)
    key = config_key({**supervised_config(cfg), "attack": attack, "trigger": trigger_fingerprint(victim.trigger),
                      "rate": rate, "runs": runs, "epochs": epochs})
    path = cache_dir() / "models" / f"preact-suspicious-{attack}-{key}.npz"
    if path.exists():
        with np.load(path) as f:
            return torch.from_numpy(f["logits"])
    logits = cgd.suspicious_logits(victim.poisoned_set, len(victim.poisoned_set.dataset.class_names), runs=runs,
                                   epochs=epochs, width=cfg.sup_width, seed=cfg.seed, progress=progress)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, logits=logits.numpy())
    return logits


def spectral_retrain(cfg, attack: str, rate: float = 0.1, remove_fraction: float | None = None,
                     progress: bool = True) -> torch.nn.Module:
    """The spectral-signature baseline (Tran et al., 2018): remove, per class, the ``remove_fraction`` (default
    1.5 × the poison rate, as in the paper) of the victim's training samples with the largest signature on its
    penultimate features, and train a new classifier from scratch on the rest (cached)."""
    from clipdef.defenses import baselines

    victim = supervised_victim(cfg, attack, rate, progress=progress)
    pz = victim.poisoned_set
    images = torch.stack([pz[i][0] for i in range(len(pz))])
    keep = baselines.spectral_filter(victim.model, images, pz.labels.numpy(),
                                     1.5 * rate if remove_fraction is None else remove_fraction)
    return retrain_on_subset(cfg, victim, keep, "spectral", progress=progress)


# ---------------------------------------------------------------------------------------------------------------
# Training independent stages in parallel processes
# ---------------------------------------------------------------------------------------------------------------

STAGES = ("backdoored_clip", "tracked_defense", "supervised_victim", "suspicious_logits", "cgd_defense",
          "spectral_retrain")


def tracked_defense(cfg, attack: str, method: str, poison_rate: float, eval_data=None, progress: bool = True,
                    victim: Victim | None = None, **loss_params) -> "Defended":
    """:func:`defended_clip` with clean accuracy and ASR recorded after every epoch (chapter 4's curves)."""
    victim = victim or backdoored_clip(cfg, attack, poison_rate, progress=progress)
    return defended_clip(cfg, attack, method, poison_rate, victim=victim, progress=progress,
                         on_epoch_end=evaluate_each_epoch(cfg, victim.trigger, eval_data), **loss_params)


def workers_for(cfg) -> int:
    """How many stages :func:`prepare` trains at once: the profile's ``workers``, or (0) one per CPU core on a
    CPU — two single-threaded trainings of the tiny models get through ~1.5× the work of one two-threaded one."""
    import os

    from clipdef.env import pick_device

    if cfg.workers > 0:
        return cfg.workers
    return (os.cpu_count() or 1) if pick_device(cfg.device) == "cpu" else 1


def prepare(cfg, jobs: list[tuple], workers: int | None = None, progress: bool = True) -> None:
    """Train the cached stages ``jobs`` — ``(stage, kwargs)`` with stage one of :data:`STAGES` — ``workers`` at a
    time, each in its own process with one thread; stages already cached just load. A chapter calls this once
    before its loops, which then load every stage from the cache. The stages must not depend on one another
    (compute shared inputs first: the clean CLIP, BadCLIP's patch, the backdoored CLIPs that defenses start from).
    With one worker the stages run here, one after the other."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    from clipdef.env import progress_bar

    for stage, _ in jobs:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
    unique = {(stage, json.dumps(kwargs, sort_keys=True, default=str)): (stage, kwargs) for stage, kwargs in jobs}
    jobs = list(unique.values())  # a stage asked for twice is trained once
    if not jobs:
        return
    workers = min(workers or workers_for(cfg), len(jobs))
    if workers <= 1:
        for stage, kwargs in progress_bar(jobs, enabled=progress, desc="stages"):
            globals()[stage](cfg, progress=False, **kwargs)
        return
    context = multiprocessing.get_context("spawn")  # fork would copy this process's threads and locks
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_single_threaded) as pool:
        futures = [pool.submit(_run_stage, cfg, stage, kwargs) for stage, kwargs in jobs]
        for future in progress_bar(futures, enabled=progress, desc=f"stages ({workers} processes)"):
            future.result()  # a failed stage raises here, with its traceback


def _single_threaded() -> None:
    from clipdef.env import end_with_parent

    end_with_parent()  # a killed chapter leaves no stage training on
    torch.set_num_threads(1)


def _run_stage(cfg, stage: str, kwargs: dict) -> None:
    globals()[stage](cfg, progress=False, **kwargs)
