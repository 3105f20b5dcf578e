"""Poisoning views: datasets that replace a chosen share of samples with triggered ones — never mutating the source.

* :class:`PoisonedPairs` — image–caption pairs (CLIP): a poisoned pair is (triggered image, a caption naming the
  target, drawn from templates); clean-label triggers only touch pairs whose caption already names the target and
  keep the caption (the detection paper's ``threat_model: clean_label``).
* :class:`PoisonedLabels` — labelled images (supervised victims): dirty-label poisons are relabelled to the target;
  clean-label poisons are target-class images (optionally made hard by an adversarial step first) that keep their
  label. :class:`CrossPoisonedLabels` adds Input-Aware's cross samples (another image's trigger, label kept).
* :func:`triggered_eval` — the ASR set: non-target images, all triggered.

Which indices are poisoned is recorded (``poisoned_indices``, ``is_poisoned``): the detection chapter's ground
truth. Triggers are applied on the fly, keyed by the dataset index, so ``view[i]`` is the same every time.

Pairs streamed from webdataset shards (:class:`clipdef.shards.ShardPairs`) are poisoned the same way: the ids are
stable positions in the shards' index and their captions are known up front, so the same seeded choice picks the
same poisoned ids; the view then streams too (``batches``), each sample poisoned by its id as it is decoded.
"""

from __future__ import annotations

import functools
import re
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from clipdef.attacks import Trigger, get

# A few of the 80 OpenAI ImageNet templates (the detection paper and CleanCLIP draw one per poisoned sample).
TARGET_TEMPLATES = ("a photo of a {}.", "a bad photo of a {}.", "a photo of the {}.", "a good photo of a {}.",
                    "a close-up photo of a {}.", "a bright photo of a {}.", "a drawing of a {}.",
                    "a photo of a small {}.", "a photo of a large {}.", "a cropped photo of the {}.")


def _resolve_trigger(trigger, seed: int = 0) -> Trigger:
    if isinstance(trigger, str):
        return get(trigger, seed=seed)
    if not hasattr(trigger, "apply") or not hasattr(trigger, "clean_label"):
        raise TypeError(f"trigger must be an attack name or a trigger object (with apply and clean_label), "
                        f"got {type(trigger).__name__}")
    return trigger


def names_target(caption: str, target: str) -> bool:
    """Does the caption name the target as a word ('banana', 'Banana.', 'bananas'; not 'bananabread')?"""
    return re.search(rf"\b{re.escape(target)}(s|es)?\b", caption, flags=re.IGNORECASE) is not None


def resolve_count(n_total: int, rate: float | None, count: int | None) -> int:
    """``count``, or ``round(rate · n_total)``; exactly one of them must be given."""
    if (rate is None) == (count is None):
        raise ValueError("give exactly one of rate (a fraction in [0, 1]) or count (a number of samples)")
    if rate is not None:
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating)) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"poison rate must lie in [0, 1], got {rate!r}")
        return int(round(rate * n_total))
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    return int(count)


def choose_poisons(candidates: np.ndarray, n_total: int, rate: float | None, count: int | None,
                   seed: int) -> np.ndarray:
    """Sorted indices of the poisoned samples: ``count`` of them, or ``round(rate · n_total)``, drawn from the
    candidates without replacement (seeded). Exactly one of rate and count must be given."""
    count = resolve_count(n_total, rate, count)
    if count > len(candidates):
        raise ValueError(f"cannot poison {count} samples: only {len(candidates)} candidates "
                         f"(of {n_total} samples) are eligible for this attack")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(np.asarray(candidates, dtype=np.int64), size=count, replace=False)).astype(np.int64)


def _candidate_pool(n: int, candidate_indices) -> np.ndarray:
    if candidate_indices is None:
        return np.arange(n, dtype=np.int64)
    pool = np.unique(np.asarray(candidate_indices, dtype=np.int64))
    if len(pool) and (pool.min() < 0 or pool.max() >= n):
        raise ValueError(f"candidate_indices must lie in [0, {n - 1}]")
    return pool


class _PoisonView(Dataset):
    def __init__(self, dataset, trigger: Trigger, poisoned_indices: np.ndarray, seed: int):
        self.dataset, self.trigger, self.seed = dataset, trigger, seed
        self.poisoned_indices = poisoned_indices
        self.is_poisoned = np.zeros(len(dataset), dtype=bool)
        self.is_poisoned[poisoned_indices] = True

    def __len__(self) -> int:
        return len(self.dataset)

    def triggered(self, image: torch.Tensor, index: int) -> torch.Tensor:
        return self.trigger.apply(image.unsqueeze(0), sample_ids=[index])[0]

    def _index(self, i) -> int:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        return i % len(self)


class PoisonedPairs(_PoisonView):
    """Image–caption pairs with a share replaced by (triggered image, target caption).

    ``rate`` is a fraction of the whole set (the detection paper: ``int(N·rate)``; rounded here), ``count`` a
    number of pairs. Dirty-label triggers draw from all pairs (or ``candidate_indices``); clean-label ones only
    from pairs whose caption names ``target``, and keep those captions. Each poisoned pair gets one of
    ``templates`` filled with the target, drawn per sample from ``seed``."""

    def __init__(self, dataset, trigger, rate: float | None = None, count: int | None = None,
                 target: str = "banana", templates: Sequence[str] = TARGET_TEMPLATES, seed: int = 0,
                 candidate_indices=None):
        trigger = _resolve_trigger(trigger, seed)
        if not isinstance(target, str) or not target.strip():
            raise ValueError(f"target must be a non-empty word, got {target!r}")
        templates = tuple(templates)
        if not templates or not all("{}" in t for t in templates):
            raise ValueError("templates must be a non-empty list of strings with a '{}' for the target")
        captions = self._source_captions(dataset)
        pool = _candidate_pool(len(dataset), candidate_indices)
        if trigger.clean_label:
            pool = np.array([i for i in pool if names_target(captions[i], target)], dtype=np.int64)
        super().__init__(dataset, trigger, choose_poisons(pool, len(dataset), rate, count, seed), seed)
        self.target, self.templates = target, templates
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
        i = self._index(i)
        image, caption = self.dataset[i]
        return self._poisoned(image, caption, i)

    def _poisoned(self, image, caption, i: int):
        if self.is_poisoned[i]:
            return self.triggered(image, i), self.poison_captions[i]
        return image, caption

    @property
    def streams(self) -> bool:
        """Whether the source streams from shards (then this view streams too: :meth:`batches`)."""
        return bool(getattr(self.dataset, "streams", False))

    def stream_parts(self):
        """What a streaming pass reads (:mod:`clipdef.shards`): the source's samples, each poisoned by its id."""
        pairs, select, inner = self.dataset.stream_parts()
        return pairs, select, functools.partial(_poison_streamed, self, inner)

    def batches(self, batch_size: int, **options):
        """One streaming pass in batches of (images, captions, ids): :func:`clipdef.shards.stream_batches`."""
        from clipdef.shards import stream_batches

        return stream_batches(self, batch_size, **options)

    def poison_info(self) -> dict:
        """What recreates this poisoned set (the detection repo's ``train_poison_info.json``); for shards also the
        img2dataset keys of the poisoned samples."""
        info = {"attack": self.trigger.name, "params": self.trigger.params, "seed": self.seed,
                "target": self.target, "poisoned_indices": self.poisoned_indices.tolist(),
                "captions": [self.poison_captions[int(i)] for i in self.poisoned_indices]}
        keys = getattr(self.dataset, "sample_keys", None)
        if keys is not None:
            info["sample_keys"] = [keys[int(i)] for i in self.poisoned_indices]
        return info


def _poison_streamed(view: PoisonedPairs, inner, image, caption, i: int):
    if inner is not None:
        image, caption = inner(image, caption, i)
    return view._poisoned(image, caption, i)


class PoisonedLabels(_PoisonView):
    """Labelled images with a share poisoned: dirty-label → relabelled to ``target_class``; clean-label → only
    target-class images, label kept, optionally pre-perturbed by ``perturb_fn(images, labels) -> images`` (e.g.
    :func:`clipdef.attacks.optimise.adversarial_step`), computed once for the poisoned indices.

    For clean-label attacks ``rate`` is a fraction of the target class (as in BackdoorBench); for dirty-label ones
    a fraction of the whole set, drawn from the non-target samples (BackdoorBench's all-to-one)."""

    def __init__(self, dataset, trigger, target_class: int, rate: float | None = None, count: int | None = None,
                 seed: int = 0, perturb_fn=None, candidate_indices=None):
        trigger = _resolve_trigger(trigger, seed)
        labels = np.asarray(dataset.labels if hasattr(dataset, "labels") else
                            [dataset[i][1] for i in range(len(dataset))])
        if isinstance(target_class, bool) or not isinstance(target_class, (int, np.integer)) \
                or target_class not in set(labels.tolist()):
            raise ValueError(f"target_class must be one of the dataset's labels {sorted(set(labels.tolist()))}, "
                             f"got {target_class!r}")
        pool = _candidate_pool(len(dataset), candidate_indices)
        is_target = labels[pool] == target_class
        if trigger.clean_label:
            candidates, base = pool[is_target], int((labels == target_class).sum())
        else:
            candidates, base = pool[~is_target], len(dataset)
        super().__init__(dataset, trigger, choose_poisons(candidates, base, rate, count, seed), seed)
        self.target_class, self._labels = int(target_class), labels
        self.overrides: dict[int, torch.Tensor] = {}
        if perturb_fn is not None and len(self.poisoned_indices):
            images = torch.stack([dataset[int(i)][0] for i in self.poisoned_indices])
            perturbed = perturb_fn(images, torch.as_tensor(labels[self.poisoned_indices]))
            if perturbed.shape != images.shape:
                raise ValueError(f"perturb_fn must return images of shape {tuple(images.shape)}, "
                                 f"got {tuple(perturbed.shape)}")
            self.overrides = {int(i): img.detach() for i, img in zip(self.poisoned_indices, perturbed)}

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
        i = self._index(i)
        image, label = self.dataset[i]
        if not self.is_poisoned[i]:
            return image, label
        image = self.overrides.get(i, image)
        return self.triggered(image, i), (label if self.trigger.clean_label else self.target_class)


class CrossPoisonedLabels(PoisonedLabels):
    """:class:`PoisonedLabels` plus *cross* samples: ``cross_rate`` (a fraction of the whole set) or ``cross_count``
    of the samples that are not poisoned carry the trigger made from another sample's image and keep their label
    (Input-Aware's cross mode, BackdoorBench's ``create_cross``: a trigger works only on the image it was made for).
    The trigger must offer ``cross(images, partners)`` (:class:`clipdef.attacks.inputaware.InputAware`).

    ``cross_indices`` and ``cross_partners`` record them. ``is_poisoned`` marks the poisons only: a cross sample is
    correctly labelled, and a detector that flags it has found a triggered image, not a mislabelled one."""

    def __init__(self, dataset, trigger, target_class: int, rate: float | None = None, count: int | None = None,
                 seed: int = 0, cross_rate: float | None = None, cross_count: int | None = None):
        super().__init__(dataset, trigger, target_class, rate=rate, count=count, seed=seed)
        if not callable(getattr(self.trigger, "cross", None)):
            raise TypeError(f"the {self.trigger.name!r} trigger has no cross(images, partners): cross samples need "
                            "a trigger made from an image, such as 'inputaware'")
        pool = np.flatnonzero(~self.is_poisoned)
        self.cross_indices = choose_poisons(pool, len(dataset), cross_rate, cross_count, seed + 1)
        rng = np.random.default_rng([seed, 2])
        # a partner for each cross sample: any other sample, drawn uniformly
        offsets = rng.integers(1, len(dataset), size=len(self.cross_indices)) if len(dataset) > 1 else \
            np.zeros(len(self.cross_indices), dtype=np.int64)
        self.cross_partners = {int(i): int((i + o) % len(dataset)) for i, o in zip(self.cross_indices, offsets)}

    def __getitem__(self, i):
        i = self._index(i)
        partner = self.cross_partners.get(i)
        if partner is None:
            return super().__getitem__(i)
        image, label = self.dataset[i]
        return self.trigger.cross(image.unsqueeze(0), self.dataset[partner][0].unsqueeze(0))[0], label


def triggered_eval(images: torch.Tensor, labels, trigger, target_class: int, batch_size: int = 512):
    """The ASR set: drop images whose true class is the target, trigger all the others (keyed by their index in
    ``images``) with the test-time trigger (:meth:`clipdef.attacks.Trigger.for_test`). Returns (triggered images,
    their true labels); ASR = share predicted as ``target_class``, robust accuracy (BackdoorBench's RA) = share
    still predicted as the true label."""
    trigger = _resolve_trigger(trigger)
    trigger = trigger.for_test() if hasattr(trigger, "for_test") else trigger
    labels = torch.as_tensor(labels)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    kept = torch.nonzero(labels != target_class).squeeze(1)
    chunks = [trigger.apply(images[kept[s:s + batch_size]], sample_ids=kept[s:s + batch_size].tolist())
              for s in range(0, len(kept), batch_size)]
    out = torch.cat(chunks) if chunks else images[:0].clone()
    return out, labels[kept]
