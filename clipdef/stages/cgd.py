"""The CGD stages (chapter 5): the guide CLIP, the suspicious model's logits (CGD's second opinion, shared by every
guide) and CGD itself on a supervised victim (:mod:`clipdef.defenses.cgd`), cached with its scores, split and
unlearning history."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from clipdef import evaluate
from clipdef.defenses.settings import CGDSettings
from clipdef.models import ClipBundle, create_clip, load_checkpoint
from clipdef.stages import cache
from clipdef.stages.base import Stage, register
from clipdef.stages.clip import (Backdoor, Pretrain, backdoored_clip, finetune_config, pretrained_clip,
                                 pretraining_snapshot)
from clipdef.stages.supervised import PoisonClassifier, classification_data, supervised_config, supervised_victim


@dataclass(frozen=True)
class Guide:
    """The CLIP that guides CGD: the profile's clean CLIP, a snapshot of the tiny CLIP's pre-training after
    ``epoch`` epochs, chapter 2's CLIP backdoored by ``attack`` at ``poison_rate``, or any open_clip model."""

    kind: str = "clean"            # "clean" | "snapshot" | "backdoored" | "openclip"
    epoch: int | None = None
    attack: str | None = None
    poison_rate: float | None = None
    model: str | None = None
    tag: str | None = None

    @classmethod
    def clean(cls) -> "Guide":
        return cls()

    @classmethod
    def snapshot(cls, epoch: int) -> "Guide":
        return cls("snapshot", epoch=int(epoch))

    @classmethod
    def backdoored(cls, attack: str, poison_rate: float) -> "Guide":
        return cls("backdoored", attack=attack, poison_rate=float(poison_rate))

    @classmethod
    def openclip(cls, model: str, tag: str) -> "Guide":
        return cls("openclip", model=model, tag=tag)

    def __post_init__(self):
        required = {"clean": (), "snapshot": ("epoch",), "backdoored": ("attack", "poison_rate"),
                    "openclip": ("model", "tag")}
        if self.kind not in required:
            raise ValueError(f"unknown guide kind {self.kind!r}; valid: {', '.join(required)}")
        missing = [f for f in required[self.kind] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.kind} guide needs {', '.join(missing)}")

    @property
    def spec(self) -> str:
        """A short text naming the guide (it enters CGD's cache key)."""
        return {"clean": "clean", "snapshot": f"snapshot:{self.epoch}",
                "backdoored": f"backdoored:{self.attack}:{self.poison_rate}",
                "openclip": f"openclip:{self.model}/{self.tag}"}[self.kind]

    def needs(self) -> list[Stage]:
        if self.kind in ("clean", "snapshot"):
            return [Pretrain()]
        if self.kind == "backdoored":
            return [Backdoor(self.attack, self.poison_rate)]
        return []

    def load(self, cfg) -> ClipBundle:
        from clipdef.env import pick_device

        if self.kind == "clean":
            return pretrained_clip(cfg, progress=False)
        if self.kind == "snapshot":
            return pretraining_snapshot(cfg, self.epoch, progress=False)
        if self.kind == "backdoored":
            return backdoored_clip(cfg, self.attack, self.poison_rate, progress=False).bundle
        return create_clip(self.model, self.tag, device=pick_device(cfg.device))


@dataclass
class CGDOutcome:
    """A victim defended by CGD: the defended classifier, the two opinions' scores, the split and the history."""

    attack: str
    guide: Guide
    model: torch.nn.Module
    scores: object            # clipdef.defenses.cgd.Scores
    split: object             # clipdef.defenses.cgd.Split (the ground truth for settings.split == "true")
    history: list[dict]       # per-step logs of the unlearning; each epoch's last step holds its held-out accuracy
    victim: object            # the SupervisedVictim

    @property
    def steps(self) -> int:
        """Optimizer steps the unlearning ran (an epoch undone by early stopping included)."""
        return len(self.history)

    @property
    def stopped_epoch(self) -> int:
        """The epoch whose held-out accuracy stopped the unlearning (its weights were undone); 0 if none did."""
        return next((s["epoch"] for s in self.history if s.get("early_stopped")), 0)

    def curve(self) -> list[dict]:
        """Per epoch: the steps run by its end and the test metrics recorded then (``test_ca``, ``test_asr``, …)."""
        return [{"epoch": s["epoch"], "steps": s["step"] + 1, **{k: v for k, v in s.items() if k.startswith("test_")}}
                for s in self.history if "heldout_acc" in s]


def _victim_key(cfg, attack: str, victim, poison_rate: float) -> dict:
    return {**supervised_config(cfg), "attack": attack, "trigger": cache.trigger_fingerprint(victim.trigger),
            "rate": poison_rate}


def suspicious_path(cfg, attack: str, victim, poison_rate: float, runs: int, epochs: int):
    key = cache.key({**_victim_key(cfg, attack, victim, poison_rate), "runs": runs, "epochs": epochs})
    return cache.artifact(cache.MODELS, "preact", "suspicious", attack, key=key, suffix=".npz")


def suspicious_logits(cfg, attack: str, poison_rate: float = 0.1, runs: int = 3, epochs: int = 5,
                      progress: bool = True) -> torch.Tensor:
    """CGD's second opinion on the supervised victim's training set (:func:`clipdef.defenses.cgd.suspicious_logits`),
    computed once per victim and setting and cached: it does not depend on the guide, so the robustness runs with
    other guides share it."""
    from clipdef.defenses import cgd

    victim = supervised_victim(cfg, attack, poison_rate, progress=progress)
    path = suspicious_path(cfg, attack, victim, poison_rate, runs, epochs)
    if path.exists():
        return torch.from_numpy(cache.load_arrays(path)["logits"])
    logits = cgd.suspicious_logits(victim.poisoned_set, len(victim.poisoned_set.dataset.class_names), runs=runs,
                                   epochs=epochs, width=cfg.sup_width, seed=cfg.seed, progress=progress)
    cache.save_arrays(path, logits=logits.numpy())
    return logits


@register
class SuspiciousModel(Stage):
    """:func:`suspicious_logits` of the victim of ``attack``."""

    name = "suspicious_model"
    attack: str
    poison_rate: float
    runs: int
    epochs: int

    def needs(self, cfg) -> list[Stage]:
        return [PoisonClassifier(self.attack, self.poison_rate)]

    def done(self, cfg) -> bool:
        victim = supervised_victim(cfg, self.attack, self.poison_rate, progress=False)
        return suspicious_path(cfg, self.attack, victim, self.poison_rate, self.runs, self.epochs).exists()

    def build(self, cfg, progress: bool = True) -> torch.Tensor:
        return suspicious_logits(cfg, self.attack, self.poison_rate, self.runs, self.epochs, progress)


def _test_metrics(cfg, trigger, test):
    """The unlearning's curve: CA, ASR and RA on the test set after every epoch (recorded, never used to decide
    anything: early stopping reads the held-out split)."""
    from clipdef.stages.supervised import evaluate_classifier

    return lambda epoch, model: {f"test_{k}": v for k, v in evaluate_classifier(cfg, model, trigger, test).items()}


def cgd_prefix(cfg, attack: str, victim, poison_rate: float, guide: Guide, settings: CGDSettings):
    guide_clip_config = {**finetune_config(cfg), "pretrained": cfg.pretrained}  # every guide derives from these
    key = cache.key({**_victim_key(cfg, attack, victim, poison_rate), "guide": guide.spec,
                     "guide_config": guide_clip_config, "templates": cfg.templates, "cgd": settings.as_dict()})
    return cache.run_prefix("preact", "cgd", attack, key=key)


def cgd_defense(cfg, attack: str, poison_rate: float = 0.1, guide: Guide = Guide(),
                settings: CGDSettings | None = None, progress: bool = True) -> CGDOutcome:
    """CGD (:mod:`clipdef.defenses.cgd`) on the supervised victim of ``attack``, guided by ``guide`` — run once,
    then loaded from the cache: the defended model, the scores and split (``.npz``) and the unlearning history.
    ``settings``: the profile's (``cfg.cgd``) when None."""
    from clipdef.defenses import cgd
    from clipdef.models import PreActResNet

    settings = settings or cfg.cgd
    victim = supervised_victim(cfg, attack, poison_rate, progress=progress)
    prefix = cgd_prefix(cfg, attack, victim, poison_rate, guide, settings)
    arrays, log = cache.sidecar(prefix, ".scores.npz"), cache.sidecar(prefix, ".history.json")
    labels = victim.poisoned_set.labels
    names = victim.poisoned_set.dataset.class_names
    if cache.final_path(prefix).exists():
        torch.manual_seed(cfg.seed)
        model = PreActResNet(len(names), width=cfg.sup_width)
        load_checkpoint(model, cache.final_path(prefix))
        f = cache.load_arrays(arrays)
        scores = cgd.Scores(f["nll_clip"], f["nll_suspicious"], f["r_clip"], f["r_suspicious"])
        split = cgd.Split(f["clean"], f["poisoned"])
        return CGDOutcome(attack, guide, model.eval(), scores, split, json.loads(log.read_text()), victim)
    images = torch.stack([victim.poisoned_set[i][0] for i in range(len(victim.poisoned_set))])
    guide_logits = cgd.clip_guide_logits(guide.load(cfg), images, names, evaluate.templates(cfg.templates))
    suspicious = suspicious_logits(cfg, attack, poison_rate, settings.suspicious_runs, settings.suspicious_epochs,
                                   progress=progress)
    scores = cgd.score_samples(guide_logits, suspicious, labels)
    if settings.split == "true":  # the control: the ground truth in place of CGD's split
        truth = np.asarray(victim.poisoned_set.is_poisoned)
        split = cgd.Split(clean=~truth, poisoned=truth)
    else:
        split = cgd.split(scores.r_clip, scores.r_suspicious, settings.sigma1, settings.sigma2)
    _, heldout, test = classification_data(cfg)
    model, history = cgd.unlearn(victim.model, victim.poisoned_set, labels, guide_logits, split,
                                 heldout=(heldout.images, heldout.labels), epochs=settings.unlearn_epochs,
                                 lr=settings.unlearn_lr, weight_decay=settings.weight_decay,
                                 batch_size=settings.unlearn_batch_size,
                                 max_iters_per_epoch=settings.max_iters_per_epoch, temperature=settings.temperature,
                                 alpha=settings.alpha, beta=settings.beta, tolerance=settings.tolerance,
                                 augment=settings.augment, seed=cfg.seed, progress=progress,
                                 on_epoch_end=_test_metrics(cfg, victim.trigger, test))
    cache.save_arrays(arrays, nll_clip=scores.nll_clip, nll_suspicious=scores.nll_suspicious, r_clip=scores.r_clip,
                      r_suspicious=scores.r_suspicious, clean=split.clean, poisoned=split.poisoned)
    cache.save_json(log, history.steps)
    cache.save_final(model, cache.final_path(prefix),
                     meta={"attack": attack, "guide": guide.spec, **settings.as_dict()})  # last: "done"
    return CGDOutcome(attack, guide, model, scores, split, history.steps, victim)


@register
class CGD(Stage):
    """:func:`cgd_defense` on the victim of ``attack`` with ``guide`` and ``settings`` (None: the profile's)."""

    name = "cgd"
    attack: str
    poison_rate: float
    guide: Guide = Guide()
    settings: CGDSettings | None = None

    def resolved(self, cfg) -> CGDSettings:
        return self.settings or cfg.cgd

    def needs(self, cfg) -> list[Stage]:
        s = self.resolved(cfg)
        return [PoisonClassifier(self.attack, self.poison_rate),
                SuspiciousModel(self.attack, self.poison_rate, s.suspicious_runs, s.suspicious_epochs),
                *self.guide.needs()]

    def done(self, cfg) -> bool:
        victim = supervised_victim(cfg, self.attack, self.poison_rate, progress=False)
        prefix = cgd_prefix(cfg, self.attack, victim, self.poison_rate, self.guide, self.resolved(cfg))
        return cache.final_path(prefix).exists()

    def build(self, cfg, progress: bool = True) -> CGDOutcome:
        return cgd_defense(cfg, self.attack, self.poison_rate, self.guide, self.resolved(cfg), progress)
