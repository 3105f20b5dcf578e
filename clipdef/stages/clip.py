"""The CLIP stages: the profile's clean CLIP (the tiny one pre-trained by the book), BadCLIP's optimised patch,
backdoored CLIPs (the clean CLIP fine-tuned on a poisoned fine-tuning set) and their defenses (clean fine-tuning
with FT, CleanCLIP or CleanerCLIP), with the evaluation they share: zero-shot clean accuracy and ASR.

Each artifact is cached under a key made of everything that determines it (profile fields, attack and its
parameters, poison rate, defense and its loss settings) plus the package version, so the detection and defense
chapters reuse the backdoored models of the attacks chapter, and a stage trained data-parallel by
:mod:`clipdef.distributed` is loaded by the chapters.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from clipdef import attacks, data, evaluate, poison
from clipdef.models import ClipBundle, create_clip, load_checkpoint
from clipdef.stages import cache
from clipdef.stages.base import Stage, register
from clipdef.train import History, threads_set, train_contrastive

# ---------------------------------------------------------------------------------------------------------------
# The clean CLIP
# ---------------------------------------------------------------------------------------------------------------

# Epochs after which the tiny CLIP's pre-training keeps a copy of the model: less-trained CLIPs for free (chapter 5's
# weaker guide) instead of a second, shorter pre-training run.
SNAPSHOT_EPOCHS = (1, 2, 3)


def pretrain_config(cfg) -> dict:
    """The fields of a profile that determine the pre-trained tiny CLIP (its cache key)."""
    return {k: getattr(cfg, k) for k in ("model", "image_size", "n_pretrain", "pretrain_epochs", "pretrain_lr",
                                         "batch_size", "weight_decay", "warmup_steps", "seed", "pretrain_threads")}


def pretrain_prefix(cfg) -> Path:
    """The cache path prefix of the tiny-CLIP pre-training run (``-final.safetensors``, ``.history.json``, ...)."""
    return cache.run_prefix(cfg.model, "pretrain", key=cache.key(pretrain_config(cfg)))


def snapshot_path(prefix: Path, epoch: int) -> Path:
    return cache.sidecar(prefix, f"-epoch{epoch}.safetensors")


def pretrained_clip(cfg, progress: bool = True) -> ClipBundle:
    """The profile's clean CLIP: real weights when ``cfg.pretrained`` is set, else the tiny CLIP pre-trained by
    the book on the world — trained once, then loaded from the cache (keyed by :func:`pretrain_config`)."""
    from clipdef.env import pick_device

    device = pick_device(cfg.device)
    if cfg.pretrained is not None:
        return create_clip(cfg.model, cfg.pretrained, device=device)
    if cfg.data != "world":
        raise ValueError(f"profile {cfg.name!r} has no pretrained weights and no world to pre-train on; "
                         "set pretrained=... (a tag or a file)")
    prefix = pretrain_prefix(cfg)
    final = cache.final_path(prefix)
    if not final.exists():
        with cache.held(prefix.name):  # grid runs side by side ask for it at once: one trains
            if not final.exists():
                _pretrain(cfg, prefix, device, progress)
    bundle = create_clip(cfg.model, None, device=device, seed=cfg.seed)
    load_checkpoint(bundle.model, final)
    return bundle


def _pretrain(cfg, prefix: Path, device, progress: bool) -> None:
    bundle = create_clip(cfg.model, None, device=device, seed=cfg.seed)
    final = cache.final_path(prefix)
    ev, start = data.eval_set(cfg), time.perf_counter()

    def keep_snapshot(epoch: int, model_bundle: ClipBundle) -> dict:
        """Snapshots for weaker guides, and the zero-shot accuracy reached per minute of training (chapter 0)."""
        elapsed = time.perf_counter() - start
        if epoch in SNAPSHOT_EPOCHS:
            cache.save_final(model_bundle.model, snapshot_path(prefix, epoch), meta={"epoch": epoch})
        m = evaluate.evaluate_clip(model_bundle, ev, None, ev.class_names, evaluate.templates(cfg.templates),
                                   batch_size=cfg.eval_batch_size)
        return {"zs_top1": m["ca_top1"], "zs_top5": m["ca_top5"], "train_seconds": elapsed}

    # Its own fixed thread count, wherever it is built (in the chapter or a stage worker): the weights depend on it
    with threads_set(cfg.pretrain_threads):
        train_contrastive(bundle, data.world_pairs(cfg, "pretrain"), epochs=cfg.pretrain_epochs,
                          lr=cfg.pretrain_lr, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay,
                          warmup_steps=cfg.warmup_steps, seed=cfg.seed, checkpoint=prefix, progress=progress,
                          desc="pre-train tiny CLIP", on_epoch_end=keep_snapshot)
    cache.save_final(bundle.model, final, meta={"pretrain_config": pretrain_config(cfg)})


def pretraining_snapshot(cfg, epoch: int, progress: bool = True) -> ClipBundle:
    """The tiny CLIP of :func:`pretrained_clip` as it was after ``epoch`` of its ``pretrain_epochs`` epochs (one of
    :data:`SNAPSHOT_EPOCHS`): the same run stopped early, a weaker model at no extra training cost."""
    from clipdef.env import pick_device

    if cfg.pretrained is not None or epoch not in SNAPSHOT_EPOCHS or epoch >= cfg.pretrain_epochs:
        raise ValueError(f"snapshots exist for the book's own pre-training after epochs {SNAPSHOT_EPOCHS} (and "
                         f"before its last, {cfg.pretrain_epochs}); got epoch {epoch} for profile {cfg.name!r}")
    pretrained_clip(cfg, progress=progress)  # trains (and snapshots) the run if it is not cached yet
    path = snapshot_path(pretrain_prefix(cfg), epoch)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the cached pre-training run was made without snapshots. Delete "
                                f"{cache.final_path(pretrain_prefix(cfg))} to pre-train again with them.")
    bundle = create_clip(cfg.model, None, device=pick_device(cfg.device), seed=cfg.seed)
    load_checkpoint(bundle.model, path)
    return bundle


def pretraining_history(cfg):
    """The per-step log of the cached tiny-CLIP pre-training run, as a DataFrame (empty if there is none)."""
    import pandas as pd

    path = cache.sidecar(pretrain_prefix(cfg), ".history.json")
    return pd.DataFrame(cache.load_json(path)) if path.exists() else pd.DataFrame()


@register
class Pretrain(Stage):
    """The profile's clean CLIP (:func:`pretrained_clip`)."""

    name = "pretrain"
    data_parallel = True

    def done(self, cfg) -> bool:
        return cfg.pretrained is not None or cache.final_path(pretrain_prefix(cfg)).exists()

    def build(self, cfg, progress: bool = True) -> ClipBundle:
        return pretrained_clip(cfg, progress=progress)


# ---------------------------------------------------------------------------------------------------------------
# Triggers and backdoored CLIPs
# ---------------------------------------------------------------------------------------------------------------

def finetune_config(cfg) -> dict:
    return {**pretrain_config(cfg), **{k: getattr(cfg, k) for k in ("n_finetune", "finetune_epochs",
                                                                    "finetune_lr", "target")}}


# The attacker's images BadCLIP's patch is optimised on: the first non-target images of the data it poisons (the
# paper: 10,000 natural CC3M images without bananas) and the first target images (the triplet's positives).
BADCLIP_IMAGES = 1024
BADCLIP_POSITIVES = 256


def badclip_patch_path(cfg, params: dict) -> Path:
    key = cache.key({"badclip": params, **pretrain_config(cfg), "pretrained": cfg.pretrained, "target": cfg.target,
                     "source": [cfg.data, cfg.finetune_csv, cfg.finetune_shards, cfg.n_finetune]})
    return cache.artifact(cache.TRIGGERS, "badclip", key=key, suffix=".safetensors")


def badclip_params(cfg, **params) -> dict:
    """The recipe BadCLIP's patch is optimised with: the profile's (``cfg.badclip``), then ``params``."""
    return dataclasses.asdict(cfg.badclip.replace(**params))


def make_trigger(cfg, name: str, clean: ClipBundle | None = None, progress: bool = True, **params):
    """The trigger of an attack with the book's parameters for it (:data:`clipdef.attacks.CLIP_PARAMS`); BadCLIP's
    patch is optimised against the clean model with the profile's recipe, changed by ``params`` (cached)."""
    if name != "badclip":
        return attacks.get(name, seed=cfg.seed, **{**attacks.CLIP_PARAMS.get(name, {}), **params})
    from safetensors.torch import load_file, save_file

    from clipdef.attacks.badclip import BadCLIPSettings, optimise_badclip_patch
    from clipdef.env import atomic_path

    params = badclip_params(cfg, **params)
    path = badclip_patch_path(cfg, params)
    if path.exists():
        patch = load_file(str(path))["patch"]
    else:
        clean = clean or pretrained_clip(cfg, progress=progress)
        source = data.finetune_pairs(cfg, progress=progress)  # the attacker's images: the data it poisons
        not_target = [i for i, c in enumerate(source.captions) if cfg.target not in c][:BADCLIP_IMAGES]
        target = [i for i, c in enumerate(source.captions) if cfg.target in c][:BADCLIP_POSITIVES]
        images = torch.stack([source[i][0] for i in not_target])
        positives = torch.stack([source[i][0] for i in target]) if target else None
        texts = [t.format(cfg.target) for t in evaluate.templates(cfg.templates)]
        patch = optimise_badclip_patch(clean, images, texts, BadCLIPSettings(**params), seed=cfg.seed,
                                       progress=progress, positive_images=positives)
        with atomic_path(path) as tmp:
            save_file({"patch": patch.contiguous()}, str(tmp))
    return attacks.get("badclip", patch=patch, seed=cfg.seed, location=params["location"])


@register
class BadCLIPPatch(Stage):
    """BadCLIP's patch, optimised against the clean CLIP on the attacker's fine-tuning images."""

    name = "badclip_patch"

    def needs(self, cfg) -> list[Stage]:
        return [Pretrain()]

    def done(self, cfg) -> bool:
        return badclip_patch_path(cfg, badclip_params(cfg)).exists()

    def build(self, cfg, progress: bool = True):
        return make_trigger(cfg, "badclip", progress=progress)


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
    steps: int = 0                 # optimizer steps of the poisoned fine-tuning


def poisoned_pairs(cfg, trigger, poison_rate: float):
    """The fine-tuning set with ``poison_rate`` of its pairs replaced by (triggered image, target caption)."""
    return poison.PoisonedPairs(data.finetune_pairs(cfg), trigger, rate=poison_rate, target=cfg.target,
                                seed=cfg.seed)


def backdoor_key(cfg, trigger, poison_rate: float) -> str:
    """The cache key of a backdoored CLIP: the profile's fine-tuning config, the trigger, the poison rate."""
    return cache.key({**finetune_config(cfg), "trigger": cache.trigger_fingerprint(trigger),
                      "poison_rate": poison_rate})


def backdoor_prefix(cfg, attack: str, trigger, poison_rate: float) -> Path:
    """The cache path prefix of a backdoored CLIP's training run (``-final.safetensors``, ``.history.json``)."""
    return cache.run_prefix(cfg.model, "backdoor", attack, key=backdoor_key(cfg, trigger, poison_rate))


def backdoored_clip(cfg, attack: str, poison_rate: float = 0.01, progress: bool = True, **params) -> Victim:
    """The clean CLIP fine-tuned on a poisoned fine-tuning set (the CleanCLIP/BadCLIP threat model), cached."""
    clean = pretrained_clip(cfg, progress=progress)
    trigger = make_trigger(cfg, attack, clean=clean, progress=progress, **params)
    pairs = poisoned_pairs(cfg, trigger, poison_rate)
    prefix = backdoor_prefix(cfg, attack, trigger, poison_rate)
    final, key = cache.final_path(prefix), backdoor_key(cfg, trigger, poison_rate)
    bundle = create_clip(cfg.model, None, device=str(clean.device))
    bundle.model.load_state_dict(clean.model.state_dict())
    if final.exists():
        meta = load_checkpoint(bundle.model, final)
        return Victim(attack, poison_rate, bundle, trigger, pairs, key=key, steps=int(meta.get("steps", 0)))
    history = train_contrastive(bundle, pairs, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr,
                                batch_size=cfg.batch_size, weight_decay=cfg.weight_decay,
                                warmup_steps=cfg.warmup_steps, seed=cfg.seed, checkpoint=prefix,
                                progress=progress, desc=f"poison ({attack})")
    steps = len(history.steps)
    cache.save_final(bundle.model, final, meta={"attack": attack, "poison_rate": poison_rate, "steps": steps})
    return Victim(attack, poison_rate, bundle, trigger, pairs, history, key, steps)


@register
class Backdoor(Stage):
    """A backdoored CLIP: the clean CLIP fine-tuned on the fine-tuning set with ``poison_rate`` of it poisoned by
    ``attack`` (:func:`backdoored_clip`)."""

    name = "backdoor"
    data_parallel = True
    attack: str
    poison_rate: float
    params: tuple = ()   # ((name, value), ...): trigger parameters other than the book's (attacks.CLIP_PARAMS)

    @classmethod
    def of(cls, attack: str, poison_rate: float, **params) -> "Backdoor":
        return cls(attack, poison_rate, tuple(sorted(params.items())))

    def needs(self, cfg) -> list[Stage]:
        # BadCLIP's patch with other parameters is optimised by this stage itself
        return [Pretrain()] + ([BadCLIPPatch()] if self.attack == "badclip" and not self.params else [])

    def done(self, cfg) -> bool:
        if self.attack == "badclip" and not badclip_patch_path(cfg, badclip_params(cfg, **dict(self.params))).exists():
            return False  # its own patch is not optimised yet (done() never optimises one)
        trigger = make_trigger(cfg, self.attack, progress=False, **dict(self.params))
        return cache.final_path(backdoor_prefix(cfg, self.attack, trigger, self.poison_rate)).exists()

    def build(self, cfg, progress: bool = True) -> Victim:
        return backdoored_clip(cfg, self.attack, self.poison_rate, progress=progress, **dict(self.params))


def evaluate_victim(cfg, bundle: ClipBundle, trigger, eval_data=None, classifier=None) -> dict[str, float]:
    """Clean accuracy and ASR (top-1/3/5/10) of a CLIP on the profile's evaluation set, the trigger as the attacker
    applies it at test time (:meth:`clipdef.attacks.Trigger.for_test`)."""
    ev = eval_data if eval_data is not None else data.eval_set(cfg)
    return evaluate.evaluate_clip(bundle, ev, None, ev.class_names, evaluate.templates(cfg.templates),
                                  trigger=trigger.for_test().apply if hasattr(trigger, "for_test") else trigger,
                                  target=cfg.target, batch_size=cfg.eval_batch_size, classifier=classifier)


def finetune_on(cfg, start: ClipBundle, pairs, tag: str, progress: bool = True) -> ClipBundle:
    """A copy of ``start`` fine-tuned with the CLIP loss on ``pairs`` (profile's fine-tuning settings), cached
    under ``tag`` and the profile's fine-tuning config (e.g. re-training on a filtered data set)."""
    key = cache.key({**finetune_config(cfg), "tag": tag, "n": len(pairs)})
    final = cache.artifact(cache.MODELS, cfg.model, tag, key=key, suffix="-final.safetensors")
    bundle = create_clip(cfg.model, None, device=str(start.device))
    bundle.model.load_state_dict(start.model.state_dict())
    if final.exists():
        load_checkpoint(bundle.model, final)
        return bundle
    train_contrastive(bundle, pairs, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, batch_size=cfg.batch_size,
                      weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, seed=cfg.seed,
                      progress=progress, desc=f"fine-tune ({tag})")
    cache.save_final(bundle.model, final, meta={"tag": tag})
    return bundle


# ---------------------------------------------------------------------------------------------------------------
# Fine-tuning defenses of a backdoored CLIP (chapter 4)
# ---------------------------------------------------------------------------------------------------------------

DEFENSE_FIELDS = ("defense_epochs", "defense_lr", "defense_batch_size", "weight_decay", "defense_warmup_steps",
                  "n_defense", "seed")


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

    @property
    def steps(self) -> int:
        """Optimizer steps of the defense."""
        return len(self.history.steps)


def defense_loss(cfg, method: str, **loss_params) -> dict:
    """Every loss setting a defense runs with: the profile's (``cfg.cleanclip``, ``cfg.cleanerclip``) changed by
    ``loss_params`` (:func:`clipdef.defenses.finetune.loss_settings` checks and normalises them)."""
    from clipdef.defenses.finetune import loss_settings

    profile = getattr(cfg, method).as_dict() if method in ("cleanclip", "cleanerclip") else {}
    return loss_settings(method, **{**profile, **loss_params})


def defense_config(cfg, victim: Victim, method: str, clean_set=None, **loss_params) -> dict:
    """What determines a defended CLIP: the backdoored victim's key, the defense and every loss parameter
    (:func:`defense_loss`), the profile's defense settings, and the clean set (the profile's, or a fingerprint of
    the one given)."""
    return {"victim": victim.key, "method": method, "loss": defense_loss(cfg, method, **loss_params),
            **{k: getattr(cfg, k) for k in DEFENSE_FIELDS},
            "clean_set": "profile" if clean_set is None else cache.dataset_fingerprint(clean_set)}


def defense_prefix(cfg, victim: Victim, method: str, clean_set=None, **loss_params) -> Path:
    """The cache path prefix of a defense run (``-final.safetensors``, ``.history.json``, per-epoch checkpoint)."""
    key = cache.key(defense_config(cfg, victim, method, clean_set, **loss_params))
    return cache.run_prefix(cfg.model, "defense", method, victim.attack, key=key)


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
    final = cache.final_path(prefix)
    if final.exists():
        bundle = copy.copy(victim.bundle)
        bundle.model = copy.deepcopy(victim.bundle.model)
        meta = load_checkpoint(bundle.model, final)
        log = cache.sidecar(prefix, ".history.json")
        history = History(cache.load_json(log) if log.exists() else [], float(meta.get("seconds", 0.0)))
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
    loss = defense_loss(cfg, method, **loss_params)
    devices = [victim.bundle.device] if victim.bundle.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        # CleanCLIP's AutoAugment draws from the global RNG: seeded here, the model depends on its key, not on
        # what the caller ran before (and the caller's RNG is left as it was)
        torch.manual_seed(cfg.seed)
        defended, history = finetune.defend(victim.bundle, pairs, method, epochs=cfg.defense_epochs,
                                            lr=cfg.defense_lr, batch_size=cfg.defense_batch_size,
                                            weight_decay=cfg.weight_decay, warmup_steps=cfg.defense_warmup_steps,
                                            seed=cfg.seed, checkpoint=prefix, progress=progress,
                                            on_epoch_end=None if on_epoch_end is None else record, **loss)
    cache.save_final(defended.model, final, meta={"attack": attack, "poison_rate": poison_rate, "method": method,
                                                  "loss": loss,
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


def tracked_defense(cfg, attack: str, method: str, poison_rate: float, eval_data=None, progress: bool = True,
                    victim: Victim | None = None, **loss_params) -> Defended:
    """:func:`defended_clip` with clean accuracy and ASR recorded after every epoch (chapter 4's curves)."""
    victim = victim or backdoored_clip(cfg, attack, poison_rate, progress=progress)
    return defended_clip(cfg, attack, method, poison_rate, victim=victim, progress=progress,
                         on_epoch_end=evaluate_each_epoch(cfg, victim.trigger, eval_data), **loss_params)


@register
class Defend(Stage):
    """A backdoored CLIP (:class:`Backdoor`) defended by ``method`` on the profile's clean defense pairs, with clean
    accuracy and ASR after every epoch (:func:`tracked_defense`). ``loss``: the defense's loss settings that differ
    from the profile's (a :class:`clipdef.defenses.settings.CleanerCLIPSettings` field → value mapping)."""

    name = "defend"
    data_parallel = True
    attack: str
    method: str
    poison_rate: float
    loss: tuple = ()   # ((name, value), ...): hashable, so the same defense asked for twice is one stage

    @classmethod
    def of(cls, attack: str, method: str, poison_rate: float, **loss) -> "Defend":
        return cls(attack, method, poison_rate, tuple(sorted(loss.items())))

    @property
    def loss_params(self) -> dict:
        return dict(self.loss)

    def needs(self, cfg) -> list[Stage]:
        return [Backdoor(self.attack, self.poison_rate)]

    def done(self, cfg) -> bool:
        trigger = make_trigger(cfg, self.attack, progress=False)
        victim = Victim(self.attack, self.poison_rate, None, trigger, None,
                        key=backdoor_key(cfg, trigger, self.poison_rate))
        return cache.final_path(defense_prefix(cfg, victim, self.method, **self.loss_params)).exists()

    def build(self, cfg, progress: bool = True) -> Defended:
        return tracked_defense(cfg, self.attack, self.method, self.poison_rate, progress=progress,
                               **self.loss_params)
