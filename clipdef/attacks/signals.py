"""Whole-image triggers: Blended, Adaptive-Blend, SIG, WaNet, SSBA-style, Nashville, BPP and low-frequency (LF)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clipdef.attacks.base import (Trigger, check_choice, check_image_tensor, check_int, check_range, register,
                                  sample_generator, seeded_generator)


def resized(pattern: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A (3, h0, w0) pattern resized (bilinear) to (3, h, w), as the papers resize Hello Kitty to the input."""
    if tuple(pattern.shape[-2:]) == (h, w):
        return pattern
    return F.interpolate(pattern[None], size=(h, w), mode="bilinear", align_corners=False)[0].clamp(0, 1)


@register
@dataclass(eq=False)
class Blended(Trigger):
    """Blended (Chen et al. 2017): x' = (1−α)·x + α·P, α = 0.2. P is a fixed seeded noise pattern (the papers use a
    Hello-Kitty image, which the book does not ship), an image you pass, or fresh noise per image
    (``per_image_noise``, as CleanCLIP's 'blended')."""

    name = "blended"
    alpha: float = 0.2
    pattern: torch.Tensor | None = None
    per_image_noise: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_range("alpha", self.alpha, 0.0, 1.0)
        if self.pattern is not None:
            if self.per_image_noise:
                raise ValueError("give either a pattern or per_image_noise=True, not both")
            self.pattern = check_image_tensor("pattern", self.pattern)

    def pattern_for(self, h: int, w: int, sample: int) -> torch.Tensor:
        if self.pattern is not None:
            return resized(self.pattern, h, w)
        if self.per_image_noise:
            return torch.rand(3, h, w, generator=sample_generator(self.seed, sample))
        return torch.rand(3, h, w, generator=seeded_generator(self.seed, "blend-pattern"))

    def _apply(self, images, ids):
        h, w = images.shape[-2:]
        if self.per_image_noise:
            patterns = torch.stack([self.pattern_for(h, w, i) for i in ids]).to(images)
        else:  # one pattern for the whole batch
            patterns = self.pattern_for(h, w, 0).to(images)
        return (1 - self.alpha) * images + self.alpha * patterns


@register
@dataclass(eq=False)
class AdaptiveBlend(Trigger):
    """Adaptive-Blend (Qi et al., ICLR 2023): the blend pattern is cut into a grid of ``pieces`` (4×4 = 16) and
    each poisoned image blends only a random ``piece_ratio`` (half) of them, at α = 0.15; at test time the full
    pattern is blended at α = 0.2 (``full=True``; :meth:`test_trigger` gives that version). Partial triggers
    weaken the latent separability that detectors rely on. (The attack's "cover" samples — triggered images that
    keep their correct label — are a poisoning-set detail not modelled here.) The pattern is a seeded noise image
    unless you pass one (the paper uses Hello Kitty)."""

    name = "adaptive_blend"
    alpha: float = 0.15
    pattern: torch.Tensor | None = None
    pieces: int = 16
    piece_ratio: float = 0.5
    full: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_range("piece_ratio", self.piece_ratio, 0.0, 1.0)
        check_int("pieces", self.pieces, 1)
        if math.isqrt(self.pieces) ** 2 != self.pieces:
            raise ValueError(f"pieces must be a square number (a k×k grid), e.g. 4, 9 or 16; got {self.pieces}")
        if self.pattern is not None:
            self.pattern = check_image_tensor("pattern", self.pattern)

    def test_trigger(self, alpha: float = 0.2) -> "AdaptiveBlend":
        """The test-time trigger: the whole pattern at α = 0.2."""
        return self.replace(full=True, alpha=alpha)

    def for_test(self) -> "AdaptiveBlend":
        return self.test_trigger()

    def piece_mask(self, h: int, w: int, sample: int) -> torch.Tensor:
        """(h, w) mask of the grid pieces this sample blends."""
        k = math.isqrt(self.pieces)
        if self.full:
            chosen = torch.ones(self.pieces)
        else:
            n = round(self.piece_ratio * self.pieces)
            order = torch.randperm(self.pieces, generator=sample_generator(self.seed, sample))
            chosen = torch.zeros(self.pieces)
            chosen[order[:n]] = 1.0
        rows = (torch.arange(h) * k // h).view(-1, 1)
        cols = (torch.arange(w) * k // w).view(1, -1)
        return chosen.view(k, k)[rows, cols]

    def _apply(self, images, ids):
        h, w = images.shape[-2:]
        pattern = self.pattern if self.pattern is not None else \
            torch.rand(3, h, w, generator=seeded_generator(self.seed, "blend-pattern"))
        pattern = resized(pattern, h, w).to(images)
        masks = torch.stack([self.piece_mask(h, w, i) for i in ids]).unsqueeze(1).to(images)
        return images + self.alpha * masks * (pattern - images)


@register
@dataclass(eq=False)
class SIG(Trigger):
    """SIG (Barni et al. 2019): a horizontal sinusoid v(i, j) = δ·sin(2π·j·f/W), δ = 60/255, f = 6.
    ``mode="add"`` adds it (BadCLIP; BackdoorBench with δ = 40/255); ``mode="blend"`` gives (1−α)·x + α·v with
    α = 0.2 (the detection paper, whose pattern is also zero-padded from 224 to 256 — not reproduced here).
    Dirty-label as in the CLIP papers; BackdoorBench runs SIG clean-label (``clean_label=True``)."""

    name = "sig"
    delta: float = 60 / 255
    frequency: float = 6.0
    mode: str = "add"
    alpha: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        check_range("delta", self.delta, 0.0, 1.0)
        check_range("alpha", self.alpha, 0.0, 1.0)
        check_choice("mode", self.mode, ("add", "blend"))
        check_range("frequency", self.frequency, 0.0, float("inf"), inclusive_low=False)

    def signal(self, h: int, w: int) -> torch.Tensor:
        j = torch.arange(w, dtype=torch.float32)
        return (self.delta * torch.sin(2 * math.pi * j * self.frequency / w)).expand(3, h, w)

    def _apply(self, images, ids):
        v = self.signal(*images.shape[-2:]).to(images)
        return images + v if self.mode == "add" else (1 - self.alpha) * images + self.alpha * v


@register
@dataclass(eq=False)
class WaNet(Trigger):
    """WaNet (Nguyen & Tran, ICLR 2021): a warp. U ~ U(−1,1)^{2×k×k}, U ← U/mean|U|, upsampled bicubically to H×W;
    grid = clamp(Id + s·U/H, −1, 1), so a pixel moves by s·U/2 pixels whatever the image size. Defaults k = 4,
    s = 0.5 (BackdoorBench); ``k=None`` is a grid of the image side (the CLIP repositories: k = 224, s = 1 at
    224 px), a field of independent per-pixel offsets. ``noise_mode`` adds a per-image random perturbation of the
    grid (WaNet's "noise" samples, which keep their labels)."""

    name = "wanet"
    k: int | None = 4
    s: float = 0.5
    grid_rescale: float = 1.0
    noise_mode: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.k is not None:
            check_int("k", self.k, 2)
        check_range("s", self.s, 0.0, 10.0)
        check_range("grid_rescale", self.grid_rescale, 0.0, 10.0, inclusive_low=False)

    def flow(self, h: int, w: int) -> torch.Tensor:
        """The warp field (H, W, 2) in normalised coordinates (before adding the identity)."""
        k = self.k or max(h, w)
        u = torch.rand(1, 2, k, k, generator=seeded_generator(self.seed, "wanet-grid")) * 2 - 1
        u = u / u.abs().mean()
        up = F.interpolate(u, size=(h, w), mode="bicubic", align_corners=True)[0].permute(1, 2, 0)
        return self.s * up / h

    def grid(self, h: int, w: int) -> torch.Tensor:
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        identity = torch.stack([xs, ys], dim=-1)
        return ((identity + self.flow(h, w)) * self.grid_rescale).clamp(-1, 1)

    def _apply(self, images, ids):
        b, _, h, w = images.shape
        grid = self.grid(h, w).to(images).expand(b, h, w, 2).clone()
        if self.noise_mode:
            for row, sample in enumerate(ids):
                jitter = torch.rand(h, w, 2, generator=sample_generator(self.seed, sample)) * 2 - 1
                grid[row] = (grid[row] + jitter.to(images) / h).clamp(-1, 1)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


@register
@dataclass(eq=False)
class SSBA(Trigger):
    """An SSBA-style sample-specific, invisible additive trigger — an honest stand-in, not StegaStamp.

    SSBA (Li et al., ICCV 2021) hides a string in each image with a trained StegaStamp encoder, giving a residual
    that depends on the image (BadCLIP encodes "Stega!!" at 224 px; BackdoorBench ships pre-encoded images). Here a
    fixed, seeded random 2-layer convolutional "encoder" maps the image (plus a fixed code pattern, the stand-in
    for the secret) to a residual r(x) = ε·tanh(·), so ‖r(x)‖∞ ≤ ε (default 8/255).

    What it captures: the residual is additive, small, spread over the whole image, different for every image
    (it follows the image's local structure) yet produced by one fixed map — the property that defeats defenses
    which look for one shared pattern. What it does not: StegaStamp is *trained* (with a decoder that must recover
    the bits and perceptual/adversarial losses that hide the residual in textures) and is robust to resizing and
    compression; this map is untrained, so its residual is neither decodable nor perceptually shaped, and its
    amplitude is a fixed bound rather than the learned one (SSBA residuals reach PSNR ≈ 27 dB)."""

    name = "ssba"
    epsilon: float = 8 / 255

    def __post_init__(self):
        super().__post_init__()
        check_range("epsilon", self.epsilon, 0.0, 1.0, inclusive_low=False)

    def _encoder(self):
        gen = seeded_generator(self.seed, "ssba-encoder")
        w1 = torch.randn(8, 6, 3, 3, generator=gen) / math.sqrt(6 * 9)
        w2 = torch.randn(3, 8, 3, 3, generator=gen) / math.sqrt(8 * 9)
        return w1, w2, gen

    def residual(self, images: torch.Tensor) -> torch.Tensor:
        w1, w2, gen = self._encoder()
        h, w = images.shape[-2:]
        code = (torch.rand(1, 3, h, w, generator=gen) * 2 - 1).to(images).expand(len(images), -1, -1, -1)
        hidden = torch.tanh(F.conv2d(torch.cat([images * 2 - 1, code], 1), w1.to(images), padding=1) * 3)
        return self.epsilon * torch.tanh(F.conv2d(hidden, w2.to(images), padding=1) * 3)

    def _apply(self, images, ids):
        return images + self.residual(images)


def _blend_darken(base: torch.Tensor, colour, opacity: float) -> torch.Tensor:
    top = torch.tensor(colour, dtype=base.dtype, device=base.device).view(1, 3, 1, 1) / 255
    return base + opacity * (torch.minimum(base, top) - base)


def _blend_lighten(base: torch.Tensor, colour, opacity: float) -> torch.Tensor:
    top = torch.tensor(colour, dtype=base.dtype, device=base.device).view(1, 3, 1, 1) / 255
    return base + opacity * (torch.maximum(base, top) - base)


def sepia(x: torch.Tensor, amount: float) -> torch.Tensor:
    """CSS sepia(amount): a colour matrix interpolated between identity and full sepia."""
    a = 1 - amount
    m = torch.tensor([[0.393 + 0.607 * a, 0.769 - 0.769 * a, 0.189 - 0.189 * a],
                      [0.349 - 0.349 * a, 0.686 + 0.314 * a, 0.168 - 0.168 * a],
                      [0.272 - 0.272 * a, 0.534 - 0.534 * a, 0.131 + 0.869 * a]], dtype=x.dtype, device=x.device)
    return torch.einsum("ij,bjhw->bihw", m, x).clamp(0, 1)


def contrast(x: torch.Tensor, amount: float) -> torch.Tensor:
    """CSS contrast(amount): scale around mid-grey."""
    return ((x - 0.5) * amount + 0.5).clamp(0, 1)


def brightness(x: torch.Tensor, amount: float) -> torch.Tensor:
    return (x * amount).clamp(0, 1)


def saturate(x: torch.Tensor, amount: float) -> torch.Tensor:
    """CSS saturate(amount): the standard luminance-preserving saturation matrix."""
    s = amount
    m = torch.tensor([[0.213 + 0.787 * s, 0.715 - 0.715 * s, 0.072 - 0.072 * s],
                      [0.213 - 0.213 * s, 0.715 + 0.285 * s, 0.072 - 0.072 * s],
                      [0.213 - 0.213 * s, 0.715 - 0.715 * s, 0.072 + 0.928 * s]], dtype=x.dtype, device=x.device)
    return torch.einsum("ij,bjhw->bihw", m, x).clamp(0, 1)


@register
@dataclass(eq=False)
class Nashville(Trigger):
    """The Nashville Instagram filter (pilgram's recipe): darken-blend (247,176,153) at 0.56, lighten-blend
    (0,70,150) at 0.4, then sepia 0.2, contrast 1.2, brightness 1.05, saturate 1.2. ``strength`` interpolates
    between the image (0) and the full filter (1)."""

    name = "nashville"
    strength: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_range("strength", self.strength, 0.0, 1.0)

    def filter(self, x: torch.Tensor) -> torch.Tensor:
        y = _blend_darken(x, (247, 176, 153), 0.56)
        y = _blend_lighten(y, (0, 70, 150), 0.4)
        return saturate(brightness(contrast(sepia(y, 0.2), 1.2), 1.05), 1.2)

    def _apply(self, images, ids):
        return images + self.strength * (self.filter(images) - images)


@register
@dataclass(eq=False)
class BPP(Trigger):
    """BPP (Wang et al., CVPR 2022): colour-depth squeezing to ``squeeze_num`` levels per channel, optionally with
    Floyd–Steinberg dithering. (Its negative training samples are a training-procedure detail, left out.)"""

    name = "bpp"
    squeeze_num: int = 8
    dithering: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_int("squeeze_num", self.squeeze_num, 2, 256)
        if not isinstance(self.dithering, bool):
            raise ValueError(f"dithering must be True or False, got {self.dithering!r}")

    def _apply(self, images, ids):
        levels = self.squeeze_num - 1
        if not self.dithering:
            return torch.round(images * levels) / levels
        out = images.clone()
        h, w = out.shape[-2:]
        for y in range(h):
            for x in range(w):
                old = out[..., y, x].clone()
                new = torch.round(old * levels) / levels
                out[..., y, x] = new
                err = old - new
                if x + 1 < w:
                    out[..., y, x + 1] += err * 7 / 16
                if y + 1 < h:
                    if x > 0:
                        out[..., y + 1, x - 1] += err * 3 / 16
                    out[..., y + 1, x] += err * 5 / 16
                    if x + 1 < w:
                        out[..., y + 1, x + 1] += err * 1 / 16
        return torch.round(out.clamp(0, 1) * levels) / levels


def default_lowpass_sigma(h: int, w: int) -> float:
    """BackdoorBench's LF smoothing (``resource/lowFrequency/gauss_smooth.py``) is a Gaussian of std 6 px on
    32 px images; scaled with the image side."""
    return 6.0 * max(h, w) / 32


def gaussian_lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur (B, C, H, W) with a Gaussian of std ``sigma`` pixels (reflect padding), channel by channel."""
    radius = max(1, int(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    if pad < radius:  # tiny images: fall back to replicate padding for the rest
        x = F.pad(x, (radius - pad,) * 4, mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def normalised_to_range(pattern: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``pattern`` shifted and scaled to span [0, ε] (BackdoorBench's ``gauss_smooth.normalization``, ε = 0.2: the
    minimum over all pixels and channels goes to 0, the maximum to ε); a constant pattern becomes zeros."""
    low, high = pattern.min(), pattern.max()
    span = high - low
    if span <= 1e-12:
        return torch.zeros_like(pattern)
    return (pattern - low) / span * epsilon


@register
@dataclass(eq=False)
class LowFrequency(Trigger):
    """LF (Zeng et al., ICCV 2021) as BackdoorBench runs it (``attack/lf.py``, ``SimpleAdditiveTrigger``): a
    positive, low-frequency pattern p with values in [0, ε] *added* to the image, x' = clip(x + p, 0, 1). ε = 0.2 =
    51/255: BackdoorBench's patterns (``resource/lowFrequency/<data>_<model>_0_255.npy``) span 0–51 on the 0–255
    scale, because ``universal_pert.py`` min–max normalises its smoothed universal perturbation to a 0.2 range after
    every update. The perturbation is optimised against a surrogate toward the target
    (:func:`clipdef.attacks.optimise.optimise_low_frequency_trigger`); the trigger adds ``perturbation`` normalised
    the same way (so ε sets its strength), or, without one, a seeded low-pass noise pattern."""

    name = "lf"
    epsilon: float = 0.2
    sigma: float | None = None     # blur std in pixels; None: default_lowpass_sigma (6 px at 32, BackdoorBench)
    perturbation: torch.Tensor | None = None

    def __post_init__(self):
        super().__post_init__()
        check_range("epsilon", self.epsilon, 0.0, 1.0, inclusive_low=False)
        if self.sigma is not None:
            check_range("sigma", self.sigma, 0.0, float("inf"), inclusive_low=False)
        if self.perturbation is not None:
            p = self.perturbation
            if not isinstance(p, torch.Tensor) or not p.is_floating_point() or p.ndim != 3 or p.shape[0] != 3 \
                    or not torch.isfinite(p).all():
                shape = tuple(p.shape) if isinstance(p, torch.Tensor) else type(p).__name__
                raise ValueError(f"perturbation must be a finite float tensor of shape (3, h, w), got {shape}")
            if p.max() - p.min() <= 1e-12:
                raise ValueError("perturbation is constant: a low-frequency trigger needs a varying pattern")
            self.perturbation = p.detach().float().cpu().clone()

    def pattern(self, h: int, w: int) -> torch.Tensor:
        """p (3, h, w), values in [0, ε]."""
        if self.perturbation is not None:
            p = self.perturbation
            if tuple(p.shape[-2:]) != (h, w):
                p = F.interpolate(p[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            return normalised_to_range(p, self.epsilon)
        noise = torch.randn(1, 3, h, w, generator=seeded_generator(self.seed, "lf-pattern"))
        return normalised_to_range(gaussian_lowpass(noise, self.sigma or default_lowpass_sigma(h, w))[0], self.epsilon)

    def _apply(self, images, ids):
        return images + self.pattern(*images.shape[-2:]).to(images)
