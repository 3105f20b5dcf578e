"""BadCLIP's trigger (Liang et al., CVPR 2024): a patch optimised against the victim's own embedding space.

A learnable patch p ∈ [0,1]^{3×s×s}, initialised from N(0.5, 0.25) and clipped, is pasted at the centre of images
that are *not* of the target class (``src/embeding_optimize_patch.py``; 16 px at 224). With the CLIP model frozen
in eval mode, Adam minimises

* a text term that pulls triggered images toward the target captions ("a photo of a banana.") — the textual
  target semantics. ``text_loss="cosine"`` (default) is 1 − cos(image, mean target caption);
  ``"contrastive"`` is the code's CLIP loss between each triggered image and a target caption drawn for it;
* optionally (``positive_images``), a triplet term with cosine distances: anchor = triggered image, positive = a
  real target-class image, negative = the clean embedding of the same image, margin 0.1 (the code's
  ``pos``+``neg`` terms).

BadCLIP runs Adam at lr 1e-3 for 50 epochs over 10 000 images (batch 64, ≈ 7 800 steps); the defaults here
(300 steps at lr 0.01) fit the tiny profile's budget. A trigger that already points at the target in embedding
space needs few poisoned pairs, which is why BadCLIP survives CleanCLIP-style fine-tuning.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F

from clipdef.attacks.base import check_choice, check_int, seeded_generator
from clipdef.attacks.patches import LOCATIONS, initial_badclip_patch, paste, patch_side


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


def optimise_badclip_patch(clip, images: torch.Tensor, target_texts: list[str], patch_size: int | None = None,
                           min_patch_size: int = 3, steps: int = 300, lr: float = 0.01, batch_size: int = 128,
                           seed: int = 0,
                           positive_images: torch.Tensor | None = None, triplet_weight: float = 1.0,
                           margin: float = 0.1, progress: bool = True, *, tokenizer=None,
                           prepare: Callable | None = None, text_loss: str = "cosine", location: str = "center",
                           augment: Callable | None = None, loss_log: list | None = None) -> torch.Tensor:
    """The optimised patch (3, s, s) on the CPU, values in [0, 1].

    ``clip``: a :class:`clipdef.models.ClipBundle`, or any open_clip model (``encode_image``/``encode_text``)
    with ``tokenizer=`` and, if it expects normalised inputs, ``prepare=`` (maps [0, 1] images to its input).
    ``images``: non-target images (N, 3, H, W) in [0, 1]; the patch is optimised at their resolution, ``patch_size``
    pixels wide, or (None) BadCLIP's 16 px at 224 scaled to them and at least ``min_patch_size``
    (:func:`clipdef.attacks.patches.patch_side`).
    ``augment``: an optional differentiable map applied to triggered images before encoding (BadCLIP uses
    AutoAugment with probability 0.5). The model is frozen and given back with its previous flags and mode.
    ``loss_log`` receives the loss of every step, which should fall."""
    from clipdef.env import progress_bar

    if len(images) == 0 or not target_texts:
        raise ValueError("need some non-target images and at least one target caption to optimise the patch")
    check_choice("text_loss", text_loss, ("cosine", "contrastive"))
    check_choice("location", location, LOCATIONS)
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    clip_ = _ClipAccess(clip, tokenizer, prepare)
    check_int("min_patch_size", min_patch_size, 1)
    size = patch_side(min(images.shape[-2:]), patch_size, min_patch_size)
    gen = seeded_generator(seed, "badclip-batches")
    patch = initial_badclip_patch(size, seed).to(clip_.device).requires_grad_(True)
    opt = torch.optim.Adam([patch], lr=lr)
    with frozen(clip_.model) as model:
        with torch.no_grad():
            text = clip_.texts(target_texts)
            text_mean = F.normalize(text.mean(0, keepdim=True), dim=-1)
            positives = None if positive_images is None else clip_.images(positive_images)
        scale = model.logit_scale.exp().detach() if hasattr(model, "logit_scale") else torch.tensor(100.0)
        for _ in progress_bar(range(steps), enabled=progress, desc="optimise BadCLIP patch"):
            idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=gen)
            batch = images[idx].to(clip_.device)
            triggered = paste(batch.clone(), patch, location, seed, idx.tolist())
            emb = clip_.images(augment(triggered) if augment else triggered)
            if text_loss == "cosine":
                loss = (1 - emb @ text_mean.t()).mean()
            else:
                loss = _contrastive(emb, text, scale, gen)
            if positives is not None:
                with torch.no_grad():
                    clean = clip_.images(batch)
                pos = positives[torch.randint(0, len(positives), (len(emb),), generator=gen).to(emb.device)]
                d_pos, d_neg = 1 - (emb * pos).sum(-1), 1 - (emb * clean).sum(-1)
                loss = loss + triplet_weight * F.relu(d_pos - d_neg + margin).mean()
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
