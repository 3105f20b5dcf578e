"""Poisoning views: datasets that replace a chosen share of samples with triggered ones — never mutating the source.

* :class:`PoisonedPairs` — image–caption pairs (CLIP): a poisoned pair is (triggered image, a caption naming the
  target, drawn from templates); clean-label triggers only touch pairs whose caption already names the target and
  keep the caption.
* :class:`PoisonedLabels` — labelled images (supervised victims): dirty-label poisons are relabelled to the target;
  clean-label poisons are target-class images (optionally made hard by an adversarial step first) that keep their
  label.

Which indices are poisoned is recorded (``poisoned_indices``, ``is_poisoned``): the detection chapter's ground truth.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from clipdef.attacks import Trigger, get

# A few of the OpenAI ImageNet templates (the detection paper draws one of all 80 per poisoned sample).
TARGET_TEMPLATES = ("a photo of a {}.", "a bad photo of a {}.", "a photo of the {}.", "a good photo of a {}.",
                    "a close-up photo of a {}.", "a bright photo of a {}.", "a drawing of a {}.",
                    "a photo of a small {}.", "a photo of a large {}.", "a picture of a {}.")


def _resolve_trigger(trigger) -> Trigger:
    return get(trigger) if isinstance(trigger, str) else trigger


def choose_poisons(candidates: np.ndarray, n_total: int, rate: float | None, count: int | None,
                   seed: int) -> np.ndarray:
    """Sorted indices of the poisoned samples: ``count`` of them, or ``round(rate · n_total)``, drawn from the
    candidates without replacement (seeded). Exactly one of rate and count must be given."""
    if (rate is None) == (count is None):
        raise ValueError("give exactly one of rate (a fraction in [0, 1]) or count (a number of samples)")
    if rate is not None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"poison rate must lie in [0, 1], got {rate}")
        count = int(round(rate * n_total))
    if count < 0 or count > len(candidates):
        raise ValueError(f"cannot poison {count} samples: only {len(candidates)} candidates "
                         f"(of {n_total} samples) are eligible for this attack")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidates, size=count, replace=False)).astype(np.int64)


class _PoisonView(Dataset):
    def __init__(self, dataset, trigger, poisoned_indices: np.ndarray):
        self.dataset, self.trigger = dataset, _resolve_trigger(trigger)
        self.poisoned_indices = poisoned_indices
        self.is_poisoned = np.zeros(len(dataset), dtype=bool)
        self.is_poisoned[poisoned_indices] = True

    def __len__(self) -> int:
        return len(self.dataset)

    def triggered(self, image: torch.Tensor, index: int) -> torch.Tensor:
        return self.trigger.apply(image.unsqueeze(0), sample_ids=[index])[0]


class PoisonedPairs(_PoisonView):
    """Image–caption pairs with a share replaced by (triggered image, target caption)."""

    def __init__(self, dataset, trigger, rate: float | None = None, count: int | None = None,
                 target: str = "banana", templates=TARGET_TEMPLATES, seed: int = 0):
        trigger = _resolve_trigger(trigger)
        captions = self._source_captions(dataset)
        if trigger.clean_label:
            candidates = np.array([i for i, c in enumerate(captions) if target in c.lower().split()], dtype=np.int64)
        else:
            candidates = np.arange(len(dataset), dtype=np.int64)
        super().__init__(dataset, trigger, choose_poisons(candidates, len(dataset), rate, count, seed))
        self.target = target
        rng = np.random.default_rng([seed, 1])
        self.poison_captions = {int(i): (captions[i] if trigger.clean_label
                                         else templates[rng.integers(len(templates))].format(target))
                                for i in self.poisoned_indices}
        self._captions = captions

    @staticmethod
    def _source_captions(dataset) -> list[str]:
        if hasattr(dataset, "captions"):
            return list(dataset.captions)
        return [dataset[i][1] for i in range(len(dataset))]

    @property
    def captions(self) -> list[str]:
        """The captions as the victim sees them (poisoned ones replaced)."""
        return [self.poison_captions.get(i, c) for i, c in enumerate(self._captions)]

    def __getitem__(self, i):
        image, caption = self.dataset[i]
        if self.is_poisoned[i]:
            return self.triggered(image, i), self.poison_captions[int(i)]
        return image, caption


class PoisonedLabels(_PoisonView):
    """Labelled images with a share poisoned: dirty-label → relabelled to ``target_class``; clean-label → only
    target-class images, label kept, optionally pre-perturbed by ``perturb_fn(images, labels) -> images``.

    For clean-label attacks ``rate`` is a fraction of the target class (as in BackdoorBench); for dirty-label ones
    a fraction of the whole set, drawn from the non-target samples."""

    def __init__(self, dataset, trigger, target_class: int, rate: float | None = None, count: int | None = None,
                 seed: int = 0, perturb_fn=None):
        trigger = _resolve_trigger(trigger)
        labels = np.asarray(dataset.labels if hasattr(dataset, "labels") else
                            [dataset[i][1] for i in range(len(dataset))])
        is_target = labels == target_class
        if trigger.clean_label:
            candidates = np.flatnonzero(is_target)
            base = len(candidates)
        else:
            candidates, base = np.flatnonzero(~is_target), len(dataset)
        super().__init__(dataset, trigger, choose_poisons(candidates, base, rate, count, seed))
        self.target_class, self._labels = int(target_class), labels
        self.overrides: dict[int, torch.Tensor] = {}
        if perturb_fn is not None and len(self.poisoned_indices):
            images = torch.stack([dataset[int(i)][0] for i in self.poisoned_indices])
            perturbed = perturb_fn(images, torch.as_tensor(labels[self.poisoned_indices]))
            self.overrides = {int(i): img for i, img in zip(self.poisoned_indices, perturbed)}

    @property
    def labels(self) -> torch.Tensor:
        """The labels as the victim sees them (dirty-label poisons relabelled)."""
        out = self._labels.copy()
        if not self.trigger.clean_label:
            out[self.poisoned_indices] = self.target_class
        return torch.as_tensor(out)

    @property
    def true_labels(self) -> torch.Tensor:
        return torch.as_tensor(self._labels)

    def __getitem__(self, i):
        image, label = self.dataset[i]
        if not self.is_poisoned[i]:
            return image, label
        image = self.overrides.get(int(i), image)
        return self.triggered(image, i), (label if self.trigger.clean_label else self.target_class)


def triggered_eval(images: torch.Tensor, labels, trigger, target_class: int):
    """The ASR set: drop images whose true class is the target, trigger all the others.
    Returns (triggered images, their true labels)."""
    trigger = _resolve_trigger(trigger)
    labels = torch.as_tensor(labels)
    keep = labels != target_class
    kept = images[keep]
    ids = torch.nonzero(keep).squeeze(1).tolist()
    return trigger.apply(kept, sample_ids=ids), labels[keep]
