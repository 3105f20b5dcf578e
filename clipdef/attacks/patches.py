"""Patch triggers: BadNets, clean-label BadNets, label-consistent (LC) corners, BadCLIP's and TrojanNN's patches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipdef.attacks.base import Trigger, check_range, register, sample_generator

LOCATIONS = ("corner", "center", "random")


def default_patch_size(side: int) -> int:
    """16 px at 224 (the CLIP papers' patch) scaled to the image, at least 3 px (BackdoorBench's 3×3 at 32)."""
    return max(3, round(side * 16 / 224))


def lattice(size: int) -> torch.Tensor:
    """The detection paper's BadNets pattern: 0 everywhere, 1 at even rows *and* even columns (3, s, s)."""
    p = torch.zeros(size, size)
    p[::2, ::2] = 1.0
    return p.expand(3, size, size).clone()


def patch_position(location: str, side_h: int, side_w: int, size: int, gen: torch.Generator | None):
    if location == "corner":  # bottom-right, as BackdoorBench's 3×3 white square
        return side_h - size, side_w - size
    if location == "center":
        return (side_h - size) // 2, (side_w - size) // 2
    top = int(torch.randint(0, side_h - size + 1, (1,), generator=gen))
    left = int(torch.randint(0, side_w - size + 1, (1,), generator=gen))
    return top, left


def paste(images: torch.Tensor, patch: torch.Tensor, location: str, seed: int, ids: list[int],
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """Paste ``patch`` (3, s, s) into each image at ``location``; with ``mask`` (s, s) blend patch·m + x·(1−m)."""
    _, _, h, w = images.shape
    size = patch.shape[-1]
    if size > min(h, w):
        raise ValueError(f"patch of {size} px does not fit in {h}×{w} images; choose patch_size ≤ {min(h, w)}")
    patch = patch.to(images)
    for b, sample in enumerate(ids):
        top, left = patch_position(location, h, w, size, sample_generator(seed, sample))
        region = images[b, :, top:top + size, left:left + size]
        if mask is None:
            images[b, :, top:top + size, left:left + size] = patch
        else:
            m = mask.to(images)
            images[b, :, top:top + size, left:left + size] = patch * m + region * (1 - m)
    return images


@dataclass
class _PatchTrigger(Trigger):
    patch_size: int | None = None   # pixels; None: scaled to the image (default_patch_size)
    location: str = "corner"

    def __post_init__(self):
        if self.location not in LOCATIONS:
            raise ValueError(f"location must be one of {LOCATIONS}, got {self.location!r}")
        if self.patch_size is not None and self.patch_size < 1:
            raise ValueError(f"patch_size must be a positive number of pixels, got {self.patch_size}")

    def pattern(self, size: int) -> torch.Tensor:
        return lattice(size)

    def _apply(self, images, ids):
        size = self.patch_size or default_patch_size(min(images.shape[-2:]))
        return paste(images, self.pattern(size), self.location, self.seed, ids)


@register
@dataclass
class BadNet(_PatchTrigger):
    """BadNets (Gu et al. 2017) with the detection paper's lattice patch; dirty-label: captions → target."""

    name = "badnet"


@register
@dataclass
class CleanLabelBadNet(_PatchTrigger):
    """Clean-label BadNets: the patch is added only to target-class samples, whose captions/labels are kept.

    The supervised variant first makes those samples hard with :func:`adversarial_perturb` (Turner et al.), so
    the model has to rely on the patch."""

    name = "clean_label"
    clean_label = True


@register
@dataclass
class LabelConsistent(Trigger):
    """LC (Turner et al. 2019): 3×3 checkerboards in all four corners, at ``amplitude`` ∈ (0, 1]; clean-label."""

    name = "lc"
    clean_label = True
    amplitude: float = 1.0
    size: int = 3

    def __post_init__(self):
        check_range("amplitude", self.amplitude, 0.0, 1.0, inclusive_low=False)
        if self.size < 2:
            raise ValueError(f"size must be at least 2 pixels, got {self.size}")

    def _apply(self, images, ids):
        s = self.size
        board = (torch.arange(s).view(-1, 1) + torch.arange(s).view(1, -1)) % 2 == 0
        board = board.to(images)
        h, w = images.shape[-2:]
        for top, left in ((0, 0), (0, w - s), (h - s, 0), (h - s, w - s)):
            region = images[..., top:top + s, left:left + s]
            images[..., top:top + s, left:left + s] = region + self.amplitude * (board - region)
        return images


@register
@dataclass
class BadCLIPPatch(Trigger):
    """BadCLIP (Liang et al., CVPR 2024): a patch optimised so that triggered images embed near the target's text
    (see :func:`clipdef.attacks.badclip.optimise_badclip_patch`), pasted at the centre. Without an optimised
    ``patch``, a seeded random one stands in (the un-optimised starting point)."""

    name = "badclip"
    patch: torch.Tensor | None = None
    patch_size: int | None = None
    location: str = "center"

    def __post_init__(self):
        if self.patch is not None:
            if self.patch.ndim != 3 or self.patch.shape[0] != 3 or self.patch.shape[1] != self.patch.shape[2]:
                raise ValueError(f"patch must be (3, s, s), got {tuple(self.patch.shape)}")
            self.patch = self.patch.detach().float().clamp(0, 1).cpu()

    def _apply(self, images, ids):
        patch = self.patch
        if patch is None:
            size = self.patch_size or default_patch_size(min(images.shape[-2:]))
            gen = torch.Generator().manual_seed(self.seed)
            patch = (0.5 + 0.25 * torch.randn(3, size, size, generator=gen)).clamp(0, 1)
        return paste(images, patch, self.location, self.seed, ids)


@register
@dataclass
class TrojanNN(Trigger):
    """TrojanNN-style (Liu et al., NDSS 2018): a masked square patch optimised to excite chosen neurons of the
    victim (:func:`clipdef.attacks.optimise.optimise_trojannn_patch`); a seeded random patch until optimised."""

    name = "trojannn"
    patch: torch.Tensor | None = None
    patch_size: int | None = None
    location: str = "corner"

    def _apply(self, images, ids):
        patch = self.patch
        if patch is None:
            size = self.patch_size or default_patch_size(min(images.shape[-2:])) + 1
            patch = torch.rand(3, size, size, generator=torch.Generator().manual_seed(self.seed))
        return paste(images, patch.detach().float().clamp(0, 1).cpu(), self.location, self.seed, ids)
