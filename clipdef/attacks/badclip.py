"""BadCLIP's trigger (Liang et al., CVPR 2024): a patch optimised against the victim's own embedding space.

A learnable patch p ∈ [0,1]^{3×s×s}, initialised from N(0.5, 0.25) and clipped, is pasted at the centre of images
that are *not* of the target class (``src/embeding_optimize_patch.py``; 16 px at 224). With the CLIP model frozen
in eval mode, Adam minimises

* a text term that pulls triggered images toward the target captions ("a photo of a banana.") — the textual
  target semantics: the code's CLIP loss between each triggered image and a target caption (``"contrastive"``,
  the ``nature`` run name), or 1 − cos(image, mean target caption) (``"cosine"``, the book's tiny setting);
* a triplet term (with ``positive_images``): anchor = triggered image, positive = a real target-class image,
  negative = the clean embedding of the same image (the ``pos`` + ``neg`` run name): the code's
  ``nn.TripletMarginLoss`` on L2 distances (``"euclidean"``) or its ``cosine_triplet_loss`` (``"cosine"``).

:class:`BadCLIPSettings` holds the recipe; its defaults are the official one (the README command: Adam at lr 1e-3,
50 epochs over 10 000 images at batch 64, AutoAugment on half the batches, EDA on a tenth). A trigger that already
points at the target in embedding space needs few poisoned pairs, which is why BadCLIP survives CleanCLIP-style
fine-tuning.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from clipdef.attacks.base import check_choice, check_int, check_range, seeded_generator
from clipdef.attacks.patches import LOCATIONS, check_patch_size, initial_badclip_patch, paste, patch_side
from clipdef.defenses.settings import Settings

TEXT_LOSSES = ("contrastive", "cosine", "none")
TRIPLET_LOSSES = ("euclidean", "cosine", "none")


@dataclass(frozen=True)
class BadCLIPSettings(Settings):
    """BadCLIP's patch optimisation; the defaults are the official recipe (``src/embeding_optimize_patch.py`` run
    with the README's command: ``--patch_size=16 --patch_location=middle --eda_prob=0.1 --aug_prob=0.5
    --batch_size=64 --epochs=50`` on ``cc3m_natural_10K_WObanana.csv``). The code switches its losses on by
    substrings of ``--name`` (the README's ``badCLIP`` switches none on, so a name such as
    ``tnature_eda_aug_pos_neg_500`` is meant): ``nature`` → the contrastive text term, ``pos`` + ``neg`` → the
    triplet term, ``cos`` → its cosine form, ``eda``/``aug`` → the augmentations."""

    patch_size: int | None = None   # pixels; None: 16 at 224 scaled with the image (--patch_size=16)
    location: str = "center"        # --patch_location=middle
    steps: int = 7800               # 50 epochs × ⌊10 000 / 64⌋ batches (its DataLoader drops the last) = 7,800
    lr: float = 1e-3                # torch.optim.Adam([patch]) at Adam's default rate
    batch_size: int = 64
    text_loss: str = "contrastive"  # 'nature': CLIP loss of triggered images against their target captions
    triplet: str = "euclidean"      # 'pos' + 'neg': nn.TripletMarginLoss (L2); 'cos' in the name: "cosine"
    triplet_weight: float = 500.0   # the name's last three digits (int(name[-3:])); 500 is the code's fallback
    margin: float = 1.0             # TripletMarginLoss's default ('_XX_tri' in the name: XX/10); 0.1 in "cosine"
    aug_prob: float = 0.5           # --aug_prob: share of batches whose images are AutoAugmented before pasting
    eda_prob: float = 0.1           # --eda_prob: share of batches whose captions are their EDA versions

    def __post_init__(self):
        check_patch_size(self.patch_size)
        check_choice("location", self.location, LOCATIONS)
        check_int("steps", self.steps, 1)
        check_range("lr", self.lr, 0.0, 1.0, inclusive_low=False)
        check_int("batch_size", self.batch_size, 1)
        check_choice("text_loss", self.text_loss, TEXT_LOSSES)
        check_choice("triplet", self.triplet, TRIPLET_LOSSES)
        check_range("triplet_weight", self.triplet_weight, 0.0, float("inf"))
        check_range("margin", self.margin, 0.0, float("inf"))
        check_range("aug_prob", self.aug_prob, 0.0, 1.0)
        check_range("eda_prob", self.eda_prob, 0.0, 1.0)
        if self.text_loss == "none" and self.triplet == "none":
            raise ValueError("BadCLIPSettings switches every loss off (text_loss and triplet both 'none'); "
                             "enable at least one")


class _ClipAccess:
    """Uniform access to a :class:`clipdef.models.ClipBundle` or a bare open_clip-style model."""

    def __init__(self, clip, tokenizer=None, prepare: Callable | None = None):
        is_bundle = hasattr(clip, "model") and hasattr(clip, "prepare_images") and hasattr(clip, "tokenize")
        self.model = clip.model if is_bundle else clip
        if not (hasattr(self.model, "encode_image") and hasattr(self.model, "encode_text")):
            raise TypeError("clip must be a ClipBundle or a model with encode_image and encode_text (open_clip)")
        if not is_bundle and tokenizer is None:
            raise ValueError("a bare model needs tokenizer= (e.g. open_clip.get_tokenizer(name))")
        self.device = next(self.model.parameters()).device
        self._tokenize = clip.tokenize if is_bundle and tokenizer is None else \
            (lambda texts: tokenizer(list(texts)).to(self.device))
        # images are in [0, 1]; the model may want them resized and normalised first
        self.prepare = prepare or (clip.prepare_images if is_bundle else (lambda x: x))

    def images(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(self.prepare(x.to(self.device))), dim=-1)

    def texts(self, texts) -> torch.Tensor:
        return F.normalize(self.model.encode_text(self._tokenize(texts)), dim=-1)


@contextmanager
def frozen(model: torch.nn.Module):
    """Eval mode and no parameter gradients for the duration; previous flags and mode restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        model.train(was_training)


def _contrastive(emb: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, gen: torch.Generator):
    """CLIP loss between triggered images and one target caption drawn per image (BadCLIP's text term)."""
    paired = text[torch.randint(0, len(text), (len(emb),), generator=gen).to(text.device)]
    logits = scale * emb @ paired.t()
    labels = torch.arange(len(emb), device=emb.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def _text_term(settings: BadCLIPSettings, emb: torch.Tensor, text: torch.Tensor, scale: torch.Tensor,
               gen: torch.Generator) -> torch.Tensor:
    if settings.text_loss == "cosine":
        mean = F.normalize(text.mean(0, keepdim=True), dim=-1)
        return (1 - emb @ mean.t()).mean()
    if settings.text_loss == "contrastive":
        return _contrastive(emb, text, scale, gen)
    return emb.new_zeros(())


def _triplet_term(settings: BadCLIPSettings, emb: torch.Tensor, positives: torch.Tensor, clean: torch.Tensor,
                  gen: torch.Generator) -> torch.Tensor:
    """The code's triplet on unit embeddings (a positive drawn per anchor, as its ``randperm`` pick of 64 target
    images): ``nn.TripletMarginLoss`` (L2 distances) or ``cosine_triplet_loss`` (1 − cos)."""
    pos = positives[torch.randint(0, len(positives), (len(emb),), generator=gen).to(emb.device)]
    if settings.triplet == "euclidean":
        loss = F.triplet_margin_loss(emb, pos, clean, margin=settings.margin)
    else:
        d_pos, d_neg = 1 - (emb * pos).sum(-1), 1 - (emb * clean).sum(-1)
        loss = F.relu(d_pos - d_neg + settings.margin).mean()
    return settings.triplet_weight * loss


def _coin(gen: torch.Generator, prob: float) -> bool:
    """One per-batch draw (the code's ``random.random() < prob``); no draw when the probability is 0 or 1."""
    return prob >= 1 or (prob > 0 and float(torch.rand((), generator=gen)) < prob)


def autoaugmented(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """AutoAugment (ImageNet policy, an op pair drawn per image), as BadCLIP's ``utils/augment_image.py`` applies
    it to a clean image before the patch is pasted; seeded from ``gen`` without touching the global RNG."""
    from clipdef.defenses.finetune import autoaugment

    with torch.random.fork_rng(devices=[]):  # torchvision draws AutoAugment's ops from the global RNG
        torch.manual_seed(int(torch.randint(0, 2 ** 62, (), generator=gen)))
        return autoaugment(images.cpu()).to(images.device)


def eda_versions(texts: list[str], seed: int) -> list[str]:
    """One EDA version of each caption (:func:`clipdef.captions.eda`), computed once as the code's dataset does
    (``OptimizePatchDataset``: ``_augment_text`` at load time)."""
    from clipdef.captions import eda

    rng = np.random.default_rng([seed, 7])
    return [eda(t, rng) for t in texts]


def optimise_badclip_patch(clip, images: torch.Tensor, target_texts: list[str],
                           settings: BadCLIPSettings | None = None, *, seed: int = 0,
                           positive_images: torch.Tensor | None = None, tokenizer=None,
                           prepare: Callable | None = None, augment: Callable | None = None, progress: bool = True,
                           loss_log: list | None = None, **changes) -> torch.Tensor:
    """The optimised patch (3, s, s) on the CPU, values in [0, 1].

    ``settings``: the recipe (default: the official one, :class:`BadCLIPSettings`); keyword ``changes`` replace
    some of its fields (``steps=200, lr=0.01``). ``clip``: a :class:`clipdef.models.ClipBundle`, or any open_clip
    model (``encode_image``/``encode_text``) with ``tokenizer=`` and, if it expects normalised inputs,
    ``prepare=`` (maps [0, 1] images to its input). ``images``: non-target images (N, 3, H, W) in [0, 1]; the patch
    is optimised at their resolution. ``target_texts``: the target captions. ``positive_images``: target-class
    images for the triplet term (without them there is none).

    Per batch, as the code does: with probability ``aug_prob`` the images are AutoAugmented *before* the patch is
    pasted (so the gradient reaches the patch unchanged and the patch itself is never augmented); with probability
    ``eda_prob`` the captions are their EDA versions. (The code swaps in only the EDA captions' attention mask, which
    its CLIP never reads, so there EDA changes nothing; here the captions are swapped, as intended.) ``augment``:
    an optional differentiable map applied to triggered images before encoding. The model is frozen and given back
    with its previous flags and mode. ``loss_log`` receives the loss of every step."""
    from clipdef.env import progress_bar

    s = (settings or BadCLIPSettings()).replace(**changes)
    if len(images) == 0 or not target_texts:
        raise ValueError("need some non-target images and at least one target caption to optimise the patch")
    if s.text_loss == "none" and (positive_images is None or s.triplet == "none"):
        raise ValueError("with text_loss='none' only the triplet term is left, and it needs positive_images "
                         "(target-class images) and a triplet other than 'none'")
    clip_ = _ClipAccess(clip, tokenizer, prepare)
    size = patch_side(min(images.shape[-2:]), s.patch_size)
    gen = seeded_generator(seed, "badclip-batches")
    coins = seeded_generator(seed, "badclip-augment")  # its own stream: without augmentation nothing else moves
    patch = initial_badclip_patch(size, seed).to(clip_.device).requires_grad_(True)
    opt = torch.optim.Adam([patch], lr=s.lr)
    with frozen(clip_.model) as model:
        with torch.no_grad():
            text = clip_.texts(target_texts)
            eda_text = clip_.texts(eda_versions(list(target_texts), seed)) if s.eda_prob > 0 else text
            positives = None if positive_images is None or s.triplet == "none" else clip_.images(positive_images)
        scale = model.logit_scale.exp().detach() if hasattr(model, "logit_scale") else torch.tensor(100.0)
        for _ in progress_bar(range(s.steps), enabled=progress, desc="optimise BadCLIP patch"):
            idx = torch.randint(0, len(images), (min(s.batch_size, len(images)),), generator=gen)
            batch = images[idx].to(clip_.device)
            if _coin(coins, s.aug_prob):
                batch = autoaugmented(batch, coins)
            captions = eda_text if _coin(coins, s.eda_prob) else text
            triggered = paste(batch.clone(), patch, s.location, seed, idx.tolist())
            emb = clip_.images(augment(triggered) if augment else triggered)
            loss = _text_term(s, emb, captions, scale, gen)
            if positives is not None:
                with torch.no_grad():
                    clean = clip_.images(batch)
                loss = loss + _triplet_term(s, emb, positives, clean, gen)
            (patch.grad,) = torch.autograd.grad(loss, patch)
            opt.step()
            with torch.no_grad():
                patch.clamp_(0, 1)
            if loss_log is not None:
                loss_log.append(loss.item())
    return patch.detach().cpu()


def target_similarity(bundle, images: torch.Tensor, target_texts: list[str], tokenizer=None,
                      prepare: Callable | None = None) -> torch.Tensor:
    """Cosine similarity of each image's embedding to the mean target-caption embedding (how 'banana' it looks)."""
    clip_ = _ClipAccess(bundle, tokenizer, prepare)
    with torch.no_grad():
        text = F.normalize(clip_.texts(target_texts).mean(0, keepdim=True), dim=-1)
        return (clip_.images(images) @ text.t()).squeeze(1).cpu()
