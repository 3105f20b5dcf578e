"""Each defense's settings in one dataclass. The defaults are the source's (the paper or its official code): the
sources' values and their citations live in :mod:`clipdef.recipes`, and ``tests/test_recipes.py`` checks that every
default here equals them. A profile holds the values it runs with (:mod:`clipdef.profiles`), and the chapters and
the command line read them from there, so a default is written once.

These are light on purpose (no torch), so that a profile can hold them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


class Settings:
    """Shared behaviour of the settings dataclasses: checked construction, replace, and plain dicts."""

    def replace(self, **changes):
        """A copy with some settings changed; names that are not settings are refused with the valid ones.
        Changes whose value is None are ignored, so a chapter can pass its parameters through unchanged."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"{type(self).__name__} has no setting(s) {unknown}; valid: "
                            f"{', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **_typed(self, changes))

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _typed(settings, changes: dict) -> dict:
    """Numbers in their field's type (1 → 1.0 for a float setting, 64.0 → 64 for an int one), so that a cache key is
    the same however a value was spelled."""
    defaults = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    out = {}
    for name, value in changes.items():
        default = defaults[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or isinstance(default, bool):
            out[name] = value
        elif isinstance(default, float):
            out[name] = float(value)
        elif isinstance(default, int) and float(value).is_integer():
            out[name] = int(value)
        else:
            out[name] = value
    return out


@dataclass(frozen=True)
class CleanCLIPSettings(Settings):
    """CleanCLIP's loss λ1·L_CLIP + λ2·L_SS (Bansal et al., ICCV 2023; ``src/train.py``, ``--clip_weight`` and
    ``--inmodal_weight``)."""

    clip_weight: float = 1.0      # λ1
    inmodal_weight: float = 1.0   # λ2


@dataclass(frozen=True)
class CleanerCLIPSettings(CleanCLIPSettings):
    """CleanerCLIP's sub-caption loss on top of CleanCLIP's (Xun et al., 2024; no public code: a reconstruction,
    see :func:`clipdef.losses.cleanerclip_loss`)."""

    subcaption_weight: float = 1.0   # λ3; the paper: a larger weight defends better (its ablation)
    samples_per_epoch: int = 1000    # pairs given sub-captions per epoch, spread over every batch (the paper: 1,000
                                     # per iteration; 3,000 against BadCLIP)
    tau_pos: float = 0.3             # temperature of matching pairs (the paper: 0.3 worked best)
    tau_neg: float = 0.3             # temperature of non-matching pairs
    negatives: int = 1               # counterfactual sub-captions per sample

    def __post_init__(self):
        if self.samples_per_epoch < 1 or self.negatives < 1:
            raise ValueError(f"samples_per_epoch and negatives must be ≥ 1, got {self.samples_per_epoch}, "
                             f"{self.negatives}")
        if self.tau_pos <= 0 or self.tau_neg <= 0:
            raise ValueError(f"temperatures must be positive, got tau_pos={self.tau_pos}, tau_neg={self.tau_neg}")


LOSS_SETTINGS = {"cleanclip": CleanCLIPSettings, "cleanerclip": CleanerCLIPSettings}


@dataclass(frozen=True)
class CGDSettings(Settings):
    """CGD (Xu et al., ACM MM 2025). Defaults from the official code (binyxu/CGD): the split and the loss from
    ``4backdoorbench/cgd/*.yaml``, the unlearning loop from ``4backdoorbench/cgd.py``, the suspicious model from
    ``utils/models.py`` and ``utils/visualization.py``."""

    sigma1: float = 0.2          # likely clean: r_clip ≤ 1 − σ1 and r_susp ≥ σ1
    sigma2: float = 0.1          # likely poisoned: r_clip > 1 − σ2 or r_susp < σ2
    temperature: float = 3.0     # distillation temperature T
    alpha: float = 5e-4          # weight of the KL term
    beta: float = 0.025          # weight of the repel term
    unlearn_epochs: int = 10
    unlearn_lr: float = 0.01     # plain SGD, no momentum
    unlearn_batch_size: int = 256
    max_iters_per_epoch: int = 200   # the code breaks each epoch after 200 iterations
    weight_decay: float = 5e-4
    tolerance: float = 1.0       # early stopping: an epoch's held-out CA this many points below the best so far
    augment: bool = True         # BackdoorBench's training transform (random crop with padding 4, horizontal flip)
    suspicious_runs: int = 3     # suspicious models trained and averaged
    suspicious_epochs: int = 5   # epochs of each suspicious model (Adam, lr 3e-4, batch 256)
    split: str = "cgd"           # "cgd": CGD's split; "true": the ground truth (a control, not a defense)

    def __post_init__(self):
        for name, value in (("sigma1", self.sigma1), ("sigma2", self.sigma2)):
            if not 0 < value < 1:
                raise ValueError(f"{name} must lie in (0, 1), got {value}; the paper uses sigma1=0.2, sigma2=0.1")
        if self.sigma2 > self.sigma1:
            raise ValueError(f"sigma2 ({self.sigma2}) must not exceed sigma1 ({self.sigma1}): a sample cannot be "
                             "both likely clean and likely poisoned; the paper uses sigma1=0.2, sigma2=0.1")
        if self.split not in ("cgd", "true"):
            raise ValueError(f"split must be 'cgd' (CGD's own) or 'true' (the ground truth, a control), got "
                             f"{self.split!r}")
        if self.tolerance <= 0:
            raise ValueError(f"tolerance must be positive (points of held-out accuracy), got {self.tolerance}")
