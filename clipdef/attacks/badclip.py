"""BadCLIP's trigger (Liang et al., CVPR 2024): a patch optimised against the victim's own embedding space.

A learnable patch p ∈ [0,1]^{3×s×s}, initialised from N(0.5, 0.25) and clipped, is pasted at the centre of images
that are *not* of the target class. Adam (lr 1e-3 in the code; larger here for the few steps the tiny world
allows) minimises, with the CLIP model frozen,

* the contrastive loss between triggered images and target captions ("a photo of a banana.") — the textual
  target semantics;
* optionally, a triplet loss that pulls the triggered image toward real target-class images and away from its
  own clean embedding (``positive_images``; the code's ``pos``/``neg`` terms).

A trigger that already points at the target in embedding space needs few poisoned pairs, which is why BadCLIP
survives CleanCLIP-style fine-tuning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipdef.attacks.patches import default_patch_size


def optimise_badclip_patch(bundle, images: torch.Tensor, target_texts: list[str], patch_size: int | None = None,
                           steps: int = 300, lr: float = 0.01, batch_size: int = 128, seed: int = 0,
                           positive_images: torch.Tensor | None = None, triplet_weight: float = 1.0,
                           margin: float = 0.1, progress: bool = True) -> torch.Tensor:
    """The optimised patch (3, s, s) for a :class:`clipdef.models.ClipBundle` (its model stays frozen)."""
    from clipdef.env import progress_bar

    if len(images) == 0 or not target_texts:
        raise ValueError("need some non-target images and at least one target caption to optimise the patch")
    model = bundle.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        size = patch_size or default_patch_size(min(images.shape[-2:]))
        gen = torch.Generator().manual_seed(seed)
        patch = (0.5 + 0.25 * torch.randn(3, size, size, generator=gen)).clamp(0, 1).to(bundle.device)
        patch.requires_grad_(True)
        opt = torch.optim.Adam([patch], lr=lr)
        with torch.no_grad():
            text = F.normalize(model.encode_text(bundle.tokenize(target_texts)), dim=-1)
            text_mean = F.normalize(text.mean(0, keepdim=True), dim=-1)
            positives = None if positive_images is None else F.normalize(
                model.encode_image(bundle.prepare_images(positive_images)), dim=-1).mean(0, keepdim=True)
        h, w = images.shape[-2:]
        top, left = (h - size) // 2, (w - size) // 2
        scale = model.logit_scale.exp().detach()
        for _ in progress_bar(range(steps), enabled=progress, desc="optimise BadCLIP patch"):
            idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=gen)
            batch = images[idx].to(bundle.device)
            triggered = batch.clone()
            triggered[..., top:top + size, left:left + size] = patch
            emb = F.normalize(model.encode_image(bundle.prepare_images(triggered)), dim=-1)
            # contrastive: each triggered image should pick a target caption over the other images' captions
            logits = scale * emb @ text.t()
            loss = -(torch.logsumexp(logits, 1) - torch.logsumexp(
                torch.cat([logits, scale * emb @ emb.detach().t()], 1), 1)).mean()
            loss = loss + (1 - emb @ text_mean.t()).mean()
            if positives is not None:
                clean = F.normalize(model.encode_image(bundle.prepare_images(batch)), dim=-1).detach()
                d_pos = 1 - (emb * positives).sum(-1)
                d_neg = 1 - (emb * clean).sum(-1)
                loss = loss + triplet_weight * F.relu(d_pos - d_neg + margin).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                patch.clamp_(0, 1)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    return patch.detach().cpu()


def target_similarity(bundle, images: torch.Tensor, target_texts: list[str]) -> torch.Tensor:
    """Mean cosine similarity of image embeddings to the mean target-caption embedding (how 'banana' they look)."""
    with torch.no_grad():
        text = F.normalize(bundle.model.encode_text(bundle.tokenize(target_texts)).mean(0, keepdim=True), dim=-1)
        emb = F.normalize(bundle.model.encode_image(bundle.prepare_images(images)), dim=-1)
        return (emb @ text.t()).squeeze(1)
