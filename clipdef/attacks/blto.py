"""BLTO-style trigger (Sun et al., ICLR 2024, "Backdoor Contrastive Learning via Bi-level Trigger Optimization"):
a small image-to-image generator whose output is clipped to an L∞ ball of ε = 8/255 around the input.

The detection paper uses BLTO's released generator (a ResNet generator: ngf 64, two stride-2 downsamples, six
residual blocks, two transposed-conv upsamples, output (tanh + 1)/2, trained on CIFAR-10 for the target 'truck'),
which is not public. Here the same design is scaled down for CPUs (ngf 16, one downsample, two residual blocks)
and trained by :func:`train_blto_generator` against a *fixed* surrogate encoder so that triggered images embed
near a target embedding, under optional augmentation. What is left out is BLTO's bi-level part: the inner loop
that re-trains the surrogate encoder (contrastively, on the poisoned data) between generator updates, which makes
the trigger survive the victim's own training. Without a trained generator, a seeded random one stands in: its
perturbation is still image-dependent and bounded by ε, but points nowhere in particular.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from clipdef.attacks.base import Trigger, check_int, check_range, register, seeded_generator


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.InstanceNorm2d(channels, affine=True),
                                  nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 3, padding=1),
                                  nn.InstanceNorm2d(channels, affine=True))

    def forward(self, x):
        return x + self.body(x)


class BLTOGenerator(nn.Module):
    """Image (B, 3, H, W) in [0, 1] → image of the same size in [0, 1]; any H, W ≥ 4."""

    def __init__(self, ngf: int = 16, n_blocks: int = 2):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, ngf, 7, padding=3), nn.InstanceNorm2d(ngf, affine=True), nn.ReLU(inplace=True),
            nn.Conv2d(ngf, 2 * ngf, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * ngf, affine=True),
            nn.ReLU(inplace=True),
            *[_ResidualBlock(2 * ngf) for _ in range(n_blocks)],
            nn.ConvTranspose2d(2 * ngf, ngf, 3, stride=2, padding=1, output_padding=1),
            nn.InstanceNorm2d(ngf, affine=True), nn.ReLU(inplace=True),
            nn.Conv2d(ngf, 3, 7, padding=3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x * 2 - 1)
        if y.shape[-2:] != x.shape[-2:]:  # odd sizes lose a pixel in the stride-2 round trip
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return (torch.tanh(y) + 1) / 2


def seeded_generator_network(ngf: int = 16, n_blocks: int = 2, seed: int = 0) -> BLTOGenerator:
    """A :class:`BLTOGenerator` initialised from ``seed`` alone (He-normal weights), without the global RNG."""
    with torch.random.fork_rng(devices=[]):  # the layers' default init draws from the global RNG: keep it intact
        net = BLTOGenerator(ngf, n_blocks)
    gen = seeded_generator(seed, "blto-init")
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim > 1:
                fan_in = p.shape[1] * p[0, 0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            else:
                p.fill_(1.0 if name.endswith("weight") else 0.0)  # norm scales 1, biases 0
    return net.eval()


def bounded(images: torch.Tensor, generated: torch.Tensor, eps: float) -> torch.Tensor:
    """BLTO's output constraint: x + clip(G(x) − x, −ε, ε)."""
    return images + (generated - images).clamp(-eps, eps)


@register
@dataclass(eq=False)
class BLTO(Trigger):
    """x' = x + clip(G(x) − x, −ε, ε), ε = ``epsilon`` = 8/255, with a trained ``generator``
    (:func:`train_blto_generator`) or a seeded random one of width ``ngf``."""

    name = "blto"
    generator: nn.Module | None = None
    epsilon: float = 8 / 255
    ngf: int = 16

    def __post_init__(self):
        super().__post_init__()
        check_range("epsilon", self.epsilon, 0.0, 1.0, inclusive_low=False)
        check_int("ngf", self.ngf, 1)
        if self.generator is not None and not isinstance(self.generator, nn.Module):
            raise ValueError(f"generator must be a torch.nn.Module, got {type(self.generator).__name__}")
        self._net = self.generator if self.generator is not None else \
            seeded_generator_network(self.ngf, seed=self.seed)

    def _apply(self, images, ids):
        net = self._net.to(images.device).eval()
        return bounded(images, net(images), self.epsilon)


def train_blto_generator(encoder: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                         target_embedding: torch.Tensor, eps: float = 8 / 255, steps: int = 200,
                         lr: float = 1e-3, batch_size: int = 64, generator: nn.Module | None = None, ngf: int = 16,
                         augment: Callable | None = None, seed: int = 0, loss_log: list | None = None,
                         progress: bool = True) -> nn.Module:
    """Train a generator so that triggered images embed near ``target_embedding`` under a surrogate ``encoder``
    (images in [0, 1] → embeddings; e.g. a clean CLIP's image tower). Loss: 1 − cos(encoder(aug(x')), target),
    x' = x + clip(G(x) − x, ±ε); Adam at ``lr``. Only the generator's parameters get gradients (the encoder's are
    never written). ``target_embedding``: (d,) or (k, d) — several are averaged after L2 normalisation."""
    from clipdef.env import progress_bar

    check_range("eps", eps, 0.0, 1.0, inclusive_low=False)
    check_int("steps", steps, 1)
    net = generator if generator is not None else seeded_generator_network(ngf, seed=seed)
    device = images.device
    net = net.to(device).train()
    target = F.normalize(F.normalize(target_embedding.reshape(-1, target_embedding.shape[-1]).float(), dim=-1)
                         .mean(0), dim=0).to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    gen = seeded_generator(seed, "blto-batches")
    for _ in progress_bar(range(steps), enabled=progress, desc="train BLTO generator"):
        batch = images[torch.randint(0, len(images), (min(batch_size, len(images)),), generator=gen).to(device)]
        triggered = bounded(batch, net(batch), eps).clamp(0, 1)
        emb = F.normalize(encoder(augment(triggered) if augment else triggered).float(), dim=-1)
        loss = (1 - emb @ target).mean()
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        if loss_log is not None:
            loss_log.append(loss.item())
    return net.eval()
