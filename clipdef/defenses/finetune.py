"""Fine-tuning defenses of a (possibly backdoored) CLIP on a clean fine-tuning set: FT, CleanCLIP, CleanerCLIP.

All three run the one training loop of :mod:`clipdef.train` with a different loss:

* **FT** — the CLIP loss alone.
* **CleanCLIP** (Bansal et al., ICCV 2023) — λ1·L_CLIP + λ2·L_SS, where L_SS aligns each image with an augmented
  view of itself (AutoAugment) and each caption with an augmented caption (EDA, computed once, as in the code).
* **CleanerCLIP** (Xun et al., 2024) — CleanCLIP plus, for a random subset of samples redrawn every epoch, a
  factual (positive) and a counterfactual (negative) sub-caption, and the sub-caption loss of
  :func:`clipdef.losses.cleanerclip_loss` with temperatures τ_pos and τ_neg, weighted by λ3.

Data-parallel training (``torchrun``, :mod:`clipdef.distributed`): the CLIP term and CleanCLIP's in-modal terms
are computed over the *global* batch (embeddings and augmented embeddings gathered from all ranks with gradient);
CleanerCLIP's sub-caption term is *per rank* (each rank's subset rows, with in-batch negatives from its own rows
only), so the objective is L_CleanCLIP(global batch) + λ3 · mean over ranks of the per-rank sub-caption losses.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from clipdef import captions as caps
from clipdef.defenses.settings import LOSS_SETTINGS, CleanCLIPSettings, CleanerCLIPSettings
from clipdef.losses import cleanclip_loss, cleanerclip_loss, clip_loss, gather_with_grad
from clipdef.models import ClipBundle

METHODS = ("ft", "cleanclip", "cleanerclip")


def autoaugment(images: torch.Tensor) -> torch.Tensor:
    """CleanCLIP's image augmentation: torchvision AutoAugment (ImageNet policy), drawn per image."""
    from torchvision.transforms import AutoAugment

    augment = AutoAugment()
    as_uint8 = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return torch.stack([augment(img) for img in as_uint8]).float().div_(255.0)


class CleanCLIPLoss:
    """λ1·L_CLIP + λ2·L_SS on a batch; EDA captions are computed once per dataset index (seeded).

    Under data-parallel training both terms are global: the four embeddings are gathered from all ranks."""

    settings_class = CleanCLIPSettings

    def __init__(self, dataset_captions: list[str], seed: int = 0, **settings):
        self.settings = self.settings_class().replace(**settings)
        rng = np.random.default_rng(seed)
        self.eda_captions = [caps.eda(c, rng) for c in dataset_captions]
        self.clip_weight, self.inmodal_weight = self.settings.clip_weight, self.settings.inmodal_weight

    def embeddings(self, bundle: ClipBundle, images, captions, idx):
        model = bundle.model
        both = model.encode_image(bundle.prepare_images(torch.cat([images, autoaugment(images)])), normalize=True)
        texts = list(captions) + [self.eda_captions[i] for i in idx.tolist()]
        text_both = model.encode_text(bundle.tokenize(texts), normalize=True)
        b = len(images)
        return both[:b], text_both[:b], both[b:], text_both[b:]

    def __call__(self, bundle: ClipBundle, images, captions, idx):
        image, text, aug_image, aug_text = gather_with_grad(*self.embeddings(bundle, images, captions, idx))
        scale = bundle.model.logit_scale.exp()
        loss = cleanclip_loss(image, text, aug_image, aug_text, scale, self.clip_weight, self.inmodal_weight)
        return loss, {"loss": loss.item(), "clip": clip_loss(image, text, scale).item()}


class CleanerCLIPLoss(CleanCLIPLoss):
    """CleanCLIP + the sub-caption loss on random rows of every batch, with sub-captions drawn afresh each step.

    ``samples_per_epoch`` pairs get sub-captions per epoch, spread over its steps: each batch of B rows gives
    ``max(2, round(B · samples_per_epoch / N))`` of its rows a factual and ``negatives`` counterfactual
    sub-captions (N: the data set's size). Drawn once per epoch instead, as a first reading of the paper suggests,
    1,000 of 100K pairs leave ≈ 1.3 rows per batch of 128 and the term is active in about a third of the batches;
    drawn per step, every batch carries it (the text-anchored part needs two rows).

    Under data-parallel training the CleanCLIP part is global (gathered) and the sub-caption part per rank: each
    rank draws its rows from its own share of the batch, and DDP averages those per-rank terms."""

    settings_class = CleanerCLIPSettings

    def __init__(self, dataset_captions: list[str], seed: int = 0, **settings):
        super().__init__(dataset_captions, seed, **settings)
        s = self.settings
        self.captions = list(dataset_captions)
        self.parsed = [caps.parse(c) for c in self.captions]
        self.rng = np.random.default_rng(seed + 1)
        self.subcaption_weight, self.samples_per_epoch = s.subcaption_weight, s.samples_per_epoch
        self.tau_pos, self.tau_neg, self.negatives = s.tau_pos, s.tau_neg, s.negatives

    def rows_of(self, batch: int) -> list[int]:
        """The rows of a batch that get sub-captions this step."""
        share = min(1.0, self.samples_per_epoch / len(self.captions))
        k = min(batch, max(2, round(batch * share)))
        return sorted(self.rng.choice(batch, k, replace=False).tolist()) if batch >= 2 else []

    def __call__(self, bundle: ClipBundle, images, captions, idx):
        image, text, aug_image, aug_text = self.embeddings(bundle, images, captions, idx)
        scale = bundle.model.logit_scale.exp()
        everyone = gather_with_grad(image, text, aug_image, aug_text)  # this rank's rows alone in one process
        loss = cleanclip_loss(*everyone, scale, self.clip_weight, self.inmodal_weight)
        logs = {"clip": clip_loss(everyone[0], everyone[1], scale).item()}
        rows = self.rows_of(len(idx))
        if len(rows) >= 2:  # the text-anchored part needs at least one other image as a negative
            ids = [idx[r].item() for r in rows]
            positive = [caps.factual(self.parsed[i], self.rng) for i in ids]
            negative = [caps.counterfactual(self.parsed[i], self.rng)[0] for i in ids for _ in range(self.negatives)]
            texts = positive + negative
            emb = bundle.model.encode_text(bundle.tokenize(texts), normalize=True)
            pos, neg = emb[:len(ids)], emb[len(ids):].view(len(ids), self.negatives, -1)
            sub = cleanerclip_loss(image[rows], pos, neg, self.tau_pos, self.tau_neg)
            loss = loss + self.subcaption_weight * sub.total
            logs.update({"subcaption": sub.total.item(), "subcaption_rows": len(rows)})
        logs["loss"] = loss.item()
        return loss, logs


def make_loss(method: str, dataset_captions: list[str], seed: int = 0, **params):
    """The loss of a defense by name: 'ft' (None: the training loop's CLIP loss), 'cleanclip', 'cleanerclip'."""
    if method == "ft":
        if params:
            raise TypeError(f"FT takes no loss parameters, got {sorted(params)}")
        return None
    if method == "cleanclip":
        return CleanCLIPLoss(dataset_captions, seed, **params)
    if method == "cleanerclip":
        return CleanerCLIPLoss(dataset_captions, seed, **params)
    raise ValueError(f"unknown defense {method!r}; valid: {', '.join(METHODS)}")


def loss_settings(method: str, **params) -> dict:
    """Every loss parameter a defense runs with: ``params`` over the loss's defaults
    (:mod:`clipdef.defenses.settings`), numbers in the default's type (so a cache key is the same whether a
    parameter is left out, given at its default, or given as ``1`` for ``1.0``). 'ft' has none. An unknown method
    (ValueError) or parameter (TypeError) is refused."""
    if method not in METHODS:
        raise ValueError(f"unknown defense {method!r}; valid: {', '.join(METHODS)}")
    if method == "ft":
        if params:
            raise TypeError(f"FT takes no loss parameters, got {sorted(params)}")
        return {}
    settings_class = LOSS_SETTINGS[method]
    try:
        return settings_class().replace(**params).as_dict()
    except TypeError as err:
        raise TypeError(f"{method} has no loss parameter(s) {sorted(set(params) - set(settings_class().as_dict()))}"
                        f"; valid: {', '.join(settings_class().as_dict())}") from err


def defend(bundle: ClipBundle, clean_pairs, method: str, *, epochs: int, lr: float, batch_size: int,
           weight_decay: float = 0.1, warmup_steps: int = 50, seed: int = 0, checkpoint=None,
           progress: bool = True, on_epoch_end=None, **loss_params):
    """Fine-tune a copy of ``bundle`` on ``clean_pairs`` with a defense; returns (defended bundle, history).

    ``clean_pairs`` is a PairDataset (or any dataset of (image, caption)); its captions are read once for EDA and
    sub-captions."""
    from clipdef.train import train_contrastive

    if len(clean_pairs) == 0:
        raise ValueError("the defense's fine-tuning set is empty; the defender needs clean pairs to fine-tune on")
    poisoned = getattr(clean_pairs, "is_poisoned", None)  # known only in experiments (poisoning views record it)
    if poisoned is not None and len(poisoned) and np.asarray(poisoned).all():
        raise ValueError("every pair of the defense's fine-tuning set is poisoned: fine-tuning on it would teach "
                         "the backdoor, not remove it. Give the defense a clean fine-tuning set.")
    dataset_captions = [clean_pairs[i][1] for i in range(len(clean_pairs))] \
        if not hasattr(clean_pairs, "captions") else list(clean_pairs.captions)
    loss_fn = make_loss(method, dataset_captions, seed, **loss_params)
    defended = copy.copy(bundle)
    defended.model = copy.deepcopy(bundle.model)
    history = train_contrastive(defended, clean_pairs, epochs=epochs, lr=lr, batch_size=batch_size,
                                weight_decay=weight_decay, warmup_steps=warmup_steps, loss_fn=loss_fn, seed=seed,
                                checkpoint=checkpoint, progress=progress, desc=f"defense {method}",
                                on_epoch_end=on_epoch_end)
    return defended, history
