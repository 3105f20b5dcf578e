"""Contrastive losses shared by pre-training, poisoned fine-tuning and the fine-tuning defenses.

All losses take L2-normalised embeddings; `logit_scale` arguments are the multiplier s = exp(model.logit_scale)
itself (so τ = 1/s), not its logarithm.

Several processes (data-parallel training, :mod:`clipdef.distributed`): :func:`gather_with_grad` concatenates a
batch's embeddings over all ranks, so a loss computed on its output is the loss of the *global* batch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the initialised default ``torch.distributed`` process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each (n, ...) tensor concatenated over all ranks along dim 0, in rank order, with gradient.

    In one process (no process group, or world size 1) the tensors come back unchanged. Every rank must call this
    with the same shapes (the training loop gives every rank the same per-rank batch size); the tensors travel in
    one ``all_gather``. Backward follows ``torch.distributed.nn.functional.all_gather``: the gradient that reaches
    this rank's rows is the *sum* over ranks of what each rank's loss puts on them. Every rank computes the same
    global loss L, so that is W·∂L/∂(rows); DistributedDataParallel then *averages* the parameter gradients over
    the W ranks, which divides the W back out: the parameters get exactly ∂L/∂θ of the loss on the whole global
    batch (open_clip's ``gather_with_grad`` with ``local_loss=False``)."""
    _, world = rank_and_world_size()
    if world == 1:
        return tensors
    from torch.distributed.nn.functional import all_gather

    n = tensors[0].shape[0]
    if any(t.shape[0] != n or t.dtype != tensors[0].dtype for t in tensors):
        raise ValueError(f"gather_with_grad needs tensors of one length and dtype, got "
                         f"{[(tuple(t.shape), t.dtype) for t in tensors]}")
    widths = [t[0].numel() for t in tensors]
    packed = torch.cat([t.reshape(n, -1) for t in tensors], dim=1)
    with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd gather
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        gathered = torch.cat(all_gather(packed.contiguous()), dim=0)
    parts = gathered.split(widths, dim=1)
    return tuple(p.reshape(-1, *t.shape[1:]) for p, t in zip(parts, tensors))


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """The symmetric InfoNCE loss of CLIP: ½ [CE(s·I Tᵀ, diag) + CE(s·T Iᵀ, diag)].

    Both embeddings must already be L2-normalised; row i of one matches row i of the other.
    """
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image and text embeddings must have the same shape, got {tuple(image_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    logits = logit_scale * image_emb @ text_emb.t()
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def _check_same_shape(**embeddings: torch.Tensor) -> None:
    shapes = {name: tuple(e.shape) for name, e in embeddings.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"embeddings must all have the same (N, d) shape, got {shapes}")
    if len(next(iter(shapes.values()))) != 2:
        raise ValueError(f"embeddings must be 2-D (N, d), got {shapes}")


def _in_modal_loss(originals: torch.Tensor, augmented: torch.Tensor, logit_scale) -> torch.Tensor:
    """CE(s · X X̃ᵀ, diag): each original must pick out its own augmented view among the batch's."""
    logits = logit_scale * originals @ augmented.t()
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def cleanclip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, aug_image_emb: torch.Tensor,
                   aug_text_emb: torch.Tensor, logit_scale: torch.Tensor | float, clip_weight: float = 1.0,
                   inmodal_weight: float = 1.0) -> torch.Tensor:
    """CleanCLIP's objective (Bansal et al., 2023): λ1·L_CLIP + λ2·L_SS.

    L_SS = ½ [CE(s·I Ĩᵀ, diag) + CE(s·T T̃ᵀ, diag)] ties each image to its augmented view (AutoAugment) and each
    caption to its augmented caption (EDA). As in CleanCLIP's code the in-modal terms are one-directional (rows are
    the originals, columns the augmented views) and use the same logit scale as the CLIP term. All embeddings are
    L2-normalised, shape (N, d); ``logit_scale`` is the multiplier s itself, as in :func:`clip_loss`.
    """
    _check_same_shape(image_emb=image_emb, text_emb=text_emb, aug_image_emb=aug_image_emb,
                      aug_text_emb=aug_text_emb)
    in_modal = 0.5 * (_in_modal_loss(image_emb, aug_image_emb, logit_scale)
                      + _in_modal_loss(text_emb, aug_text_emb, logit_scale))
    return clip_weight * clip_loss(image_emb, text_emb, logit_scale) + inmodal_weight * in_modal


@dataclass
class CleanerCLIPLoss:
    """The sub-caption loss and its two directional parts (scalar tensors; ``total`` is what to back-propagate)."""

    total: torch.Tensor
    image_anchored: torch.Tensor
    text_anchored: torch.Tensor

    def as_dict(self) -> dict[str, float]:
        """Plain floats, for logging."""
        return {"total": float(self.total), "image_anchored": float(self.image_anchored),
                "text_anchored": float(self.text_anchored)}


def _check_subcaption_shapes(image_emb, pos_text_emb, neg_text_emb, tau_pos, tau_neg) -> torch.Tensor:
    """Validate the inputs; return the negatives as (S, M, d)."""
    if image_emb.ndim != 2 or image_emb.shape != pos_text_emb.shape:
        raise ValueError(f"image_emb and pos_text_emb must both be (S, d), got {tuple(image_emb.shape)} and "
                         f"{tuple(pos_text_emb.shape)}")
    if len(image_emb) == 0:
        raise ValueError("the sub-caption loss needs at least one sample")
    negatives = neg_text_emb.unsqueeze(1) if neg_text_emb.ndim == 2 else neg_text_emb
    if negatives.ndim != 3 or negatives.shape[0] != image_emb.shape[0] or negatives.shape[2] != image_emb.shape[1]:
        raise ValueError(f"neg_text_emb must be (S, d) or (S, M, d) with S={image_emb.shape[0]}, "
                         f"d={image_emb.shape[1]}, got {tuple(neg_text_emb.shape)}")
    if negatives.shape[1] == 0:
        raise ValueError("neg_text_emb must hold at least one counterfactual per sample")
    if tau_pos <= 0 or tau_neg <= 0:
        raise ValueError(f"temperatures must be positive, got tau_pos={tau_pos}, tau_neg={tau_neg}")
    return negatives


def _pair_logits(similarity: torch.Tensor, tau_pos: float, tau_neg: float) -> torch.Tensor:
    """Divide a square similarity matrix by τ_pos on the diagonal (matching pairs) and τ_neg elsewhere."""
    matching = torch.eye(len(similarity), dtype=torch.bool, device=similarity.device)
    return torch.where(matching, similarity / tau_pos, similarity / tau_neg)


def cleanerclip_loss(image_emb: torch.Tensor, pos_text_emb: torch.Tensor, neg_text_emb: torch.Tensor,
                     tau_pos: float = 0.3, tau_neg: float = 0.3) -> CleanerCLIPLoss:
    """The sub-caption loss that CleanerCLIP (Xun et al., 2024) adds to CleanCLIP, for the S augmented samples.

    Inputs (all L2-normalised): ``image_emb`` I (S, d); ``pos_text_emb`` P (S, d), one factual sub-caption per
    image; ``neg_text_emb`` N, (S, d) or (S, M, d), M counterfactual sub-captions per image. With c the cosine
    similarity, and every *matching* pair (I_i, P_i) divided by τ_pos and every *non-matching* pair by τ_neg:

    image-anchored   L_I = −1/S Σ_i log  e^{c(I_i,P_i)/τ_pos} / ( e^{c(I_i,P_i)/τ_pos}
                                           + Σ_{j≠i} e^{c(I_i,P_j)/τ_neg} + Σ_m e^{c(I_i,N_im)/τ_neg} )
    text-anchored    L_T = −1/S Σ_i log  e^{c(P_i,I_i)/τ_pos} / ( e^{c(P_i,I_i)/τ_pos} + Σ_{j≠i} e^{c(P_i,I_j)/τ_neg} )
    total            L   = ½ (L_I + L_T)

    What the paper states, and this follows: the objective has an image-anchored part (image close to its positive
    sub-caption, far from the negative sub-captions) and a text-anchored part (positive sub-caption close to its
    image, far from the images it does not describe), with temperature τ_pos for positive samples and τ_neg for
    negative ones; 0.3 for both worked best.

    What is reconstruction (the paper's Eq. 2–4 were not available to this project; they are reported to contain
    undefined terms): (1) the InfoNCE form; (2) the image-anchored denominator holds the image's own
    counterfactuals *and* the other samples' factual sub-captions (in-batch negatives, as in CLIP), but not the
    other samples' counterfactuals; (3) in the text-anchored part the negatives are the other images of the subset,
    i.e. the images the anchor sub-caption is paired with as a negative pair, since a counterfactual has no image
    it should match and cannot anchor a term; (4) the temperature goes with the kind of *pair* — a matching pair
    uses τ_pos, every non-matching pair τ_neg — so a lower τ_neg sharpens the push on the hardest negatives;
    (5) the two parts are averaged. With τ_pos = τ_neg = τ it reduces to a symmetric InfoNCE with temperature τ
    whose image-to-text side has M extra hard negatives per image. Weight it against ``cleanclip_loss`` outside.
    """
    negatives = _check_subcaption_shapes(image_emb, pos_text_emb, neg_text_emb, tau_pos, tau_neg)
    target = torch.arange(len(image_emb), device=image_emb.device)
    image_to_positives = image_emb @ pos_text_emb.t()                          # (S, S)
    image_to_negatives = torch.einsum("sd,smd->sm", image_emb, negatives)      # (S, M)
    image_logits = torch.cat([_pair_logits(image_to_positives, tau_pos, tau_neg),
                              image_to_negatives / tau_neg], dim=1)
    text_logits = _pair_logits(image_to_positives.t(), tau_pos, tau_neg)
    image_anchored = F.cross_entropy(image_logits, target)
    text_anchored = F.cross_entropy(text_logits, target)
    return CleanerCLIPLoss(0.5 * (image_anchored + text_anchored), image_anchored, text_anchored)
