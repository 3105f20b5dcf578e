"""Patch triggers: BadNets, clean-label BadNets, label-consistent (LC) corners, BadCLIP's patch and TrojanNN's masked
trigger.

Patches are pasted in pixel space at the image's own resolution. Their default size scales with the image:
16 px at 224 (the detection paper's and BadCLIP's patch), 3 px at 32 (BackdoorBench's 3×3 square on CIFAR).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clipdef.attacks.base import (Trigger, check_choice, check_image_tensor, check_int, check_range, register,
                                  sample_generator, seeded_generator)

LOCATIONS = ("corner", "center", "random")
BADNET_PATTERNS = ("lattice", "white", "yellow")


def default_patch_size(side: int) -> int:
    """16 px at 224 (the CLIP papers' patch) scaled to the image, at least 3 px (BackdoorBench's 3×3 at 32)."""
    return max(3, round(side * 16 / 224))


def patch_side(side: int, patch_size: int | None = None) -> int:
    """A patch's side in pixels on images of ``side``: ``patch_size`` when given, else the papers' 16 px at 224 scaled
    to the image (:func:`default_patch_size`)."""
    return patch_size or default_patch_size(side)


def lattice(size: int) -> torch.Tensor:
    """The detection paper's BadNets pattern: 0 everywhere, 1 at even rows *and* even columns (3, s, s)."""
    p = torch.zeros(size, size)
    p[::2, ::2] = 1.0
    return p.expand(3, size, size).clone()


def badnet_pattern(kind: str, size: int) -> torch.Tensor:
    """``lattice`` (detection paper), ``white`` (BackdoorBench's white square), ``yellow`` (CleanCLIP's
    R = G = 1, B = 0 patch), as a (3, s, s) tensor."""
    if kind == "lattice":
        return lattice(size)
    if kind == "white":
        return torch.ones(3, size, size)
    return torch.tensor([1.0, 1.0, 0.0]).view(3, 1, 1).expand(3, size, size).clone()


def patch_position(location: str, side_h: int, side_w: int, size: int, gen: torch.Generator | None):
    """Top-left corner: ``corner`` = bottom-right (BackdoorBench), ``center`` (the detection paper's test-time
    position, (104, 104) for 16 px at 224; BadCLIP's ``middle``), ``random`` = uniform over all positions that
    keep the patch inside (the detection paper and CleanCLIP draw one per poisoned image)."""
    if location == "corner":
        return side_h - size, side_w - size
    if location == "center":
        return (side_h - size) // 2, (side_w - size) // 2
    top = int(torch.randint(0, side_h - size + 1, (1,), generator=gen))
    left = int(torch.randint(0, side_w - size + 1, (1,), generator=gen))
    return top, left


def paste(images: torch.Tensor, patch: torch.Tensor, location: str, seed: int, ids: list[int],
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """Paste ``patch`` (3, s, s) into each image *in place* at ``location``; with ``mask`` (1 or 3, s, s) in
    [0, 1], blend ``patch·m + x·(1−m)``. Differentiable in ``patch`` (the optimisers use it on a copy)."""
    _, _, h, w = images.shape
    size = patch.shape[-1]
    if size > min(h, w):
        raise ValueError(f"patch of {size} px does not fit in {h}×{w} images; choose patch_size ≤ {min(h, w)}")
    patch = patch.to(images)
    m = None if mask is None else mask.to(images)
    for b, sample in enumerate(ids):
        gen = sample_generator(seed, sample) if location == "random" else None
        top, left = patch_position(location, h, w, size, gen)
        region = images[b, :, top:top + size, left:left + size]
        images[b, :, top:top + size, left:left + size] = patch if m is None else patch * m + region * (1 - m)
    return images


def check_patch_size(patch_size) -> None:
    if patch_size is not None and (isinstance(patch_size, bool) or not isinstance(patch_size, int)
                                   or patch_size < 1):
        raise ValueError(f"patch_size must be a positive number of pixels (or None: scaled to the image), "
                         f"got {patch_size!r}")


@dataclass(eq=False)
class _PatchTrigger(Trigger):
    patch_size: int | None = None   # pixels; None: scaled to the image (default_patch_size)
    location: str = "corner"
    pattern: str | torch.Tensor = "lattice"
    test_location: str | None = None   # where the test-time trigger pastes the patch (None: ``location``)

    def __post_init__(self):
        super().__post_init__()
        check_choice("location", self.location, LOCATIONS)
        if self.test_location is not None:
            check_choice("test_location", self.test_location, LOCATIONS)
        check_patch_size(self.patch_size)
        if isinstance(self.pattern, torch.Tensor):
            self.pattern = check_image_tensor("pattern", self.pattern)
        else:
            check_choice("pattern", self.pattern, BADNET_PATTERNS)

    def patch(self, size: int) -> torch.Tensor:
        if isinstance(self.pattern, torch.Tensor):  # a custom pattern, resized (nearest) to the patch size
            return torch.nn.functional.interpolate(self.pattern[None], size=(size, size), mode="nearest")[0]
        return badnet_pattern(self.pattern, size)

    def _apply(self, images, ids):
        size = patch_side(min(images.shape[-2:]), self.patch_size)
        return paste(images, self.patch(size), self.location, self.seed, ids)

    def for_test(self) -> "_PatchTrigger":
        return self if self.test_location is None else self.replace(location=self.test_location, test_location=None)


@register
@dataclass(eq=False)
class BadNet(_PatchTrigger):
    """BadNets (Gu et al. 2017) with the detection paper's lattice patch (or ``pattern="white"``/``"yellow"``);
    dirty-label: captions → target. ``location="random", test_location="center"`` is the detection paper's
    setting (a new position per poisoned image in training, the centre at test, ``cc3m_badnets.py`` and
    ``in1k_backdoor_zeroshot.py``); ``clean_label=True`` its clean-label threat model."""

    name = "badnet"


@register
@dataclass(eq=False)
class CleanLabelBadNet(_PatchTrigger):
    """Clean-label BadNets: the patch is added only to target-class samples, whose captions/labels are kept.

    The supervised variant first makes those samples hard with
    :func:`clipdef.attacks.optimise.adversarial_perturb` (Turner et al.), passed to
    :class:`clipdef.poison.PoisonedLabels` as ``perturb_fn``, so the model has to rely on the patch."""

    name = "clean_label"
    clean_label: bool = True


def checkerboard(size: int) -> torch.Tensor:
    """A 3×3-cell ±1 checkerboard of ``size`` pixels, +1 in the corner cells (size, size)."""
    cell = torch.arange(size) * 3 // size
    return ((cell.view(-1, 1) + cell.view(1, -1)) % 2 == 0).float() * 2 - 1


@register
@dataclass(eq=False)
class LabelConsistent(Trigger):
    """LC (Turner et al. 2019; BackdoorBench ``labelConsistentAttack(trigger="all-corners")``): a 3×3 ±1
    checkerboard in all four corners, *added* at ``reduced_amplitude`` ∈ [0, 1] and clipped, so amplitude 1 stamps
    black/white squares and smaller amplitudes are fainter. Clean-label: the poisoned target-class images are
    first made hard by an adversarial step (``perturb_fn`` of :class:`clipdef.poison.PoisonedLabels`).

    ``size`` is the board's side in pixels; None scales BackdoorBench's 3 px at 32 with the image (it resizes its
    32×32 mask with nearest neighbours), e.g. 6 px at 64, 21 px at 224."""

    name = "lc"
    clean_label: bool = True
    reduced_amplitude: float = 1.0
    size: int | None = None

    def __post_init__(self):
        super().__post_init__()
        check_range("reduced_amplitude", self.reduced_amplitude, 0.0, 1.0)
        if self.size is not None:
            check_int("size", self.size, 3)

    def _apply(self, images, ids):
        h, w = images.shape[-2:]
        s = self.size or max(3, round(3 * min(h, w) / 32))
        if 2 * s > min(h, w):
            raise ValueError(f"corner boards of {s} px overlap in {h}×{w} images; choose size ≤ {min(h, w) // 2}")
        board = self.reduced_amplitude * checkerboard(s).to(images)
        for top, left in ((0, 0), (0, w - s), (h - s, 0), (h - s, w - s)):
            images[..., top:top + s, left:left + s] += board
        return images


def initial_badclip_patch(size: int, seed: int) -> torch.Tensor:
    """BadCLIP's starting point: N(0.5, 0.25) clipped to [0, 1] (``embeding_optimize_patch.py``)."""
    gen = seeded_generator(seed, "badclip-init")
    return (0.5 + 0.25 * torch.randn(3, size, size, generator=gen)).clamp(0, 1)


@register
@dataclass(eq=False)
class BadCLIPPatch(Trigger):
    """BadCLIP (Liang et al., CVPR 2024): a patch optimised so that triggered images embed near the target's text
    (see :func:`clipdef.attacks.badclip.optimise_badclip_patch`), pasted at the centre. Without an optimised
    ``patch``, the optimiser's seeded starting point stands in."""

    name = "badclip"
    patch: torch.Tensor | None = None
    patch_size: int | None = None
    location: str = "center"

    def __post_init__(self):
        super().__post_init__()
        check_choice("location", self.location, LOCATIONS)
        check_patch_size(self.patch_size)
        if self.patch is not None:
            self.patch = check_image_tensor("patch", self.patch, channels=(3,))
            if self.patch.shape[1] != self.patch.shape[2]:
                raise ValueError(f"patch must be square (3, s, s), got {tuple(self.patch.shape)}")

    def _apply(self, images, ids):
        patch = self.patch
        if patch is None:
            patch = initial_badclip_patch(patch_side(min(images.shape[-2:]), self.patch_size), self.seed)
        return paste(images, patch, self.location, self.seed, ids)


TROJANNN_MASKS = ("apple", "square")


def _pixel_centres(h: int, w: int):
    """Row and column coordinates of the pixel centres, in units of the image side (0 … 1)."""
    rows = ((torch.arange(h, dtype=torch.float32) + 0.5) / h).view(-1, 1)
    cols = ((torch.arange(w, dtype=torch.float32) + 0.5) / w).view(1, -1)
    return rows, cols


def trojannn_mask(kind: str, h: int, w: int) -> torch.Tensor:
    """BackdoorBench's TrojanNN masks (``resource/trojannn/*.png``: white shapes on black, resized to the input),
    drawn at any size as a (1, h, w) tensor of 0 and 1. ``apple`` (``apple4.png``, the preactresnet18 config's
    mask) is a round fruit with a stem in the bottom-right quarter (rows 16–29, columns 17–29 at 32 px, 117 of 1,024
    pixels; this drawing covers 113); ``square`` (``square.png``) covers rows and columns 20–29 at 32 px. Drawn,
    not shipped: the book carries no image files."""
    check_choice("mask", kind, TROJANNN_MASKS)
    rows, cols = _pixel_centres(h, w)
    if kind == "square":
        inside = (rows >= 20 / 32) & (rows < 30 / 32) & (cols >= 20 / 32) & (cols < 30 / 32)
    else:  # a disc for the body and a short stem at its top right
        body = ((rows - 23.5 / 32) / (5.9 / 32)) ** 2 + ((cols - 23.5 / 32) / (5.9 / 32)) ** 2 <= 1
        stem = (rows >= 16 / 32) & (rows < 19 / 32) & (cols >= 24 / 32) & (cols < 26 / 32)
        inside = body | stem
    return inside.float().unsqueeze(0)


@register
@dataclass(eq=False)
class TrojanNN(Trigger):
    """TrojanNN (Liu et al., NDSS 2018) as BackdoorBench runs it (``attack/trojannn.py``, ``TrojanTrigger``): an
    additive trigger x' = clip(x + t, 0, 1), where t is zero outside ``mask`` and, inside, the mask image
    optimised so that chosen neurons of the surrogate's last linear layer reach a target value
    (:func:`clipdef.attacks.optimise.optimise_trojannn_trigger`). ``mask``: ``apple`` (BackdoorBench's
    PreAct-ResNet18 config), ``square``, or a (1 or 3, h, w) tensor in [0, 1] whose non-zero pixels are the
    trigger's support. ``pattern``: the optimised t, (3, h, w) in [0, 1], resized to the images; without one the
    optimiser's starting point stands in, the mask image itself (white inside)."""

    name = "trojannn"
    pattern: torch.Tensor | None = None
    mask: str | torch.Tensor = "apple"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.mask, torch.Tensor):
            mask = self.mask[None] if self.mask.ndim == 2 else self.mask
            self.mask = check_image_tensor("mask", mask)
            if not self.mask.any():
                raise ValueError("mask has no non-zero pixel: the trigger would change nothing")
        else:
            check_choice("mask", self.mask, TROJANNN_MASKS)
        if self.pattern is not None:
            self.pattern = check_image_tensor("pattern", self.pattern, channels=(3,))

    def mask_image(self, h: int, w: int) -> torch.Tensor:
        """The mask at (h, w) as a (3, h, w) image in [0, 1] (BackdoorBench resizes its mask PNG to the input)."""
        if isinstance(self.mask, torch.Tensor):
            return F.interpolate(self.mask[None], size=(h, w), mode="bilinear", align_corners=False)[0].clamp(0, 1)
        return trojannn_mask(self.mask, h, w).expand(3, h, w).clone()

    def trigger_image(self, h: int, w: int) -> torch.Tensor:
        """t at (h, w): the pattern (or the mask image), zero outside the mask's support."""
        start = self.mask_image(h, w)
        if self.pattern is None:
            return start
        pattern = F.interpolate(self.pattern[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        return pattern.clamp(0, 1) * (start > 0)

    def _apply(self, images, ids):
        return images + self.trigger_image(*images.shape[-2:]).to(images)
