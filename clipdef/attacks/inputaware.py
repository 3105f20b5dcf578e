"""Input-Aware Dynamic backdoor (IAD; Nguyen & Tran, NeurIPS 2020) as BackdoorBench runs it (``attack/inputaware.py``,
``config/attack/inputaware/default.yaml``).

Two generators make the trigger of each image from the image itself: a pattern network G and a mask network M,
x' = x + (G(x) − x) · m(x), with m(x) = threshold(M(x)) a nearly binary mask. Training has two phases:

1. M alone, on clean data, for ``clean_train_epochs`` (25): a *norm* loss keeps the mask sparse,
   λ_norm · mean(relu(m(x) − density)) with λ_norm = 100 and density 0.032, and a *diversity* loss keeps the masks
   of two different images different, λ_div · ‖x₁ − x₂‖ / ‖m(x₁) − m(x₂)‖ (root-mean-square distances, λ_div = 1).
2. M frozen; G and the classifier C *jointly*: in every batch a share of the images carry their own trigger and the
   target label (backdoor samples), as many more carry the trigger of *another* image and keep their label (cross
   samples: a trigger only works on the image it was made for), the rest are clean; C and G descend the
   cross-entropy of the whole batch plus the diversity loss of G's patterns.

The trained G and M are an ordinary trigger afterwards (:class:`InputAware`, a fixed function of the image), so the
same object poisons a fixed training set for the defenses, builds the ASR test set and serves CGD. BackdoorBench
does the same after training: it writes the poisoned training set it hands to defenses with the final G and M.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipdef.attacks.base import Trigger, check_int, check_range, register, seeded_generator
from clipdef.defenses.settings import Settings

EPSILON = 1e-7   # BackdoorBench's EPSILON: keeps the diversity ratio finite


@dataclass(frozen=True)
class InputAwareSettings(Settings):
    """IAD's attack settings; the defaults are BackdoorBench's (``config/attack/inputaware/default.yaml``). The
    classifier itself trains with the victims' settings of the profile (its lr_C = 0.01 is BackdoorBench's victim
    rate, the paper profile's ``sup_lr``); ``None`` fields scale with the profile
    (:func:`clipdef.stages.supervised.inputaware_settings`)."""

    lr_generator: float = 0.01      # lr_G, Adam(betas=(0.5, 0.9))
    lr_mask: float = 0.01           # lr_M, Adam(betas=(0.5, 0.9))
    lambda_div: float = 1.0         # lambda_div
    lambda_norm: float = 100.0      # lambda_norm
    mask_density: float = 0.032     # mask_density
    mask_epochs: int | None = None  # clean_train_epochs = 25 beside 100 classifier epochs; None: a quarter of them
    width: int | None = None        # the generators' first width (32); None: 32 · sup_width / 64, at least 8

    def __post_init__(self):
        check_range("lr_generator", self.lr_generator, 0.0, 1.0, inclusive_low=False)
        check_range("lr_mask", self.lr_mask, 0.0, 1.0, inclusive_low=False)
        check_range("lambda_div", self.lambda_div, 0.0, float("inf"))
        check_range("lambda_norm", self.lambda_norm, 0.0, float("inf"))
        check_range("mask_density", self.mask_density, 0.0, 1.0, inclusive_low=False)
        if self.mask_epochs is not None:
            check_int("mask_epochs", self.mask_epochs, 0)
        if self.width is not None:
            check_int("width", self.width, 1)


# ---------------------------------------------------------------------------------------------------------------
# The generators (BackdoorBench's InputAwareGenerator, Conv2dBlock, Threshold)
# ---------------------------------------------------------------------------------------------------------------

def _conv_block(c_in: int, c_out: int, relu: bool = True) -> nn.Sequential:
    """3×3 convolution, batch norm (momentum 0.05, as the code's Conv2dBlock), ReLU."""
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.05)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class InputAwareGenerator(nn.Module):
    """BackdoorBench's generator for 3-channel images: three stages down (two conv blocks and a 2×2 max-pool each;
    ``width`` → 2·width → 4·width channels), a middle block, three stages up (bilinear ×2 and two conv blocks, the
    last without ReLU) to ``out_channels``; output tanh(y)/(2 + ε) + 0.5 in (0, 1). G has 3 output channels (a
    pattern), M has 1 (a mask, thresholded by :func:`threshold`). Takes images in [0, 1], normalised inside as the
    victims normalise them; any size of at least 8 px (odd sizes are resized back)."""

    def __init__(self, out_channels: int = 3, width: int = 32, steps: int = 3):
        super().__init__()
        check_int("out_channels", out_channels, 1)
        check_int("width", width, 1)
        check_int("steps", steps, 1)
        self.steps = steps
        down, c_in = [], 3
        for step in range(steps):
            c_out = width * 2 ** step
            down += [_conv_block(c_in, c_out), _conv_block(c_out, c_out), nn.MaxPool2d(2)]
            c_in = c_out
        self.down = nn.Sequential(*down)
        self.middle = _conv_block(c_in, c_in)
        up = []
        for step in range(steps):
            c_out = out_channels if step == steps - 1 else c_in // 2
            up += [nn.Upsample(scale_factor=2, mode="bilinear"), _conv_block(c_in, c_in),
                   _conv_block(c_in, c_out, relu=step < steps - 1)]
            c_in = c_out
        self.up = nn.Sequential(*up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = 2 ** self.steps
        if min(x.shape[-2:]) < side:
            raise ValueError(f"the input-aware generator needs images of at least {side}×{side} px, "
                             f"got {tuple(x.shape[-2:])}")
        y = self.up(self.middle(self.down(x * 2 - 1)))
        if y.shape[-2:] != x.shape[-2:]:  # sizes that are not multiples of 2^steps lose pixels in the pooling
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.tanh(y) / (2 + EPSILON) + 0.5


def threshold(mask: torch.Tensor) -> torch.Tensor:
    """BackdoorBench's ``Threshold``: tanh(20·m − 10)/(2 + ε) + 0.5, a steep step at m = 0.5 that keeps gradients."""
    return torch.tanh(mask * 20 - 10) / (2 + EPSILON) + 0.5


def blend(images: torch.Tensor, patterns: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """IAD's trigger, x + (pattern − x) · mask (``create_bd``/``create_cross``)."""
    return images + (patterns - images) * masks


def seeded_networks(width: int, seed: int) -> tuple[InputAwareGenerator, InputAwareGenerator]:
    """A pattern and a mask generator initialised from ``seed`` alone, without the global RNG: He-normal
    convolutions and zero biases, which keep the input's variance through the layers, so that the untrained
    stand-ins still make each image's trigger from that image (PyTorch's default initialisation, with batch norm
    in eval mode, gives nearly the same output for every input)."""
    nets = []
    for out_channels, stream in ((3, "inputaware-pattern"), (1, "inputaware-mask")):
        with torch.random.fork_rng(devices=[]):  # the layers' default init draws from the global RNG: keep it intact
            net = InputAwareGenerator(out_channels, width)
        gen = seeded_generator(seed, stream)
        with torch.no_grad():
            for conv in (m for m in net.modules() if isinstance(m, nn.Conv2d)):
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                conv.bias.zero_()
        nets.append(net.eval())
    return nets[0], nets[1]


@register
@dataclass(eq=False)
class InputAware(Trigger):
    """Input-Aware Dynamic backdoor (Nguyen & Tran, NeurIPS 2020): x' = x + (G(x) − x) · threshold(M(x)), with a
    trained pattern network ``generator`` and mask network ``mask_generator``
    (:func:`train_inputaware_victim` and :func:`train_mask_generator`; the victim stage trains them with the
    victim, :func:`clipdef.stages.supervised.inputaware_victim`). Without them, seeded random networks of first
    width ``width`` stand in (:func:`seeded_networks`): their trigger is made from each image but unlearnt (a
    dense, unstructured blend).
    :meth:`cross` gives the cross samples: an image with the trigger made from another image."""

    name = "inputaware"
    generator: nn.Module | None = None
    mask_generator: nn.Module | None = None
    width: int = 8

    def __post_init__(self):
        super().__post_init__()
        check_int("width", self.width, 1)
        for field, value in (("generator", self.generator), ("mask_generator", self.mask_generator)):
            if value is not None and not isinstance(value, nn.Module):
                raise ValueError(f"{field} must be a torch.nn.Module (an InputAwareGenerator), "
                                 f"got {type(value).__name__}")
        if (self.generator is None) != (self.mask_generator is None):
            raise ValueError("give both generator and mask_generator (the trained pair), or neither")
        if self.generator is None:
            self._pattern_net, self._mask_net = seeded_networks(self.width, self.seed)
        else:
            self._pattern_net, self._mask_net = self.generator, self.mask_generator

    def pattern_and_mask(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """G(x) (B, 3, H, W) and threshold(M(x)) (B, 1, H, W), with both networks in eval mode."""
        pattern_net = self._pattern_net.to(images.device).eval()
        mask_net = self._mask_net.to(images.device).eval()
        return pattern_net(images), threshold(mask_net(images))

    def _apply(self, images, ids):
        return blend(images, *self.pattern_and_mask(images))

    def cross(self, images: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
        """Cross samples: each image blended with the pattern and mask made from its partner image (same shape),
        clamped to [0, 1]; they keep their labels."""
        if images.shape != partners.shape:
            raise ValueError(f"images {tuple(images.shape)} and partners {tuple(partners.shape)} must match")
        with torch.no_grad():
            work, other = images.detach().float(), partners.detach().float().to(images.device)
            return blend(work, *self.pattern_and_mask(other)).clamp_(0, 1).to(images.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Training (BackdoorBench's train_mask_step and train_step)
# ---------------------------------------------------------------------------------------------------------------

def _rms_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per sample: sqrt(mean((a − b)²)) (the code's MSELoss(reduction='none'), averaged, square-rooted)."""
    return (a - b).pow(2).mean(dim=tuple(range(1, a.ndim))).sqrt()


def diversity_loss(images1: torch.Tensor, images2: torch.Tensor, out1: torch.Tensor,
                   out2: torch.Tensor) -> torch.Tensor:
    """IAD's diversity loss: mean over pairs of ‖x₁ − x₂‖ / (‖g(x₁) − g(x₂)‖ + ε), root-mean-square distances:
    two different images must get different patterns (or masks), or the loss grows."""
    return (_rms_distance(images1, images2) / (_rms_distance(out1, out2) + EPSILON)).mean()


def mask_norm_loss(masks: torch.Tensor, density: float) -> torch.Tensor:
    """IAD's mask-norm loss: mean(relu(m − density)), which keeps the mask's mean near ``density``."""
    return F.relu(masks - density).mean()


def _paired_loaders(dataset, batch_size: int, seed: int):
    """Two loaders over ``dataset`` shuffled independently (the code's clean_train_dataloader1 and 2): each batch
    pairs every image with another one."""
    from torch.utils.data import DataLoader

    from clipdef.train import Indexed, collate_labelled

    size = min(batch_size, len(dataset))
    return tuple(DataLoader(Indexed(dataset), batch_size=size, shuffle=True, collate_fn=collate_labelled,
                            generator=torch.Generator().manual_seed(int(s)))
                 for s in np.random.SeedSequence([seed, 14]).generate_state(2))


def _check_trainable(dataset, epochs: int, batch_size: int) -> None:
    if len(dataset) == 0:
        raise ValueError("the training set is empty: nothing to train on")
    check_int("epochs", epochs, 0)
    check_int("batch_size", batch_size, 2)


def train_mask_generator(mask_net: nn.Module, dataset, settings: InputAwareSettings | None = None, *, epochs: int,
                         batch_size: int = 128, seed: int = 0, augment: Callable | None = None,
                         progress: bool = True, loss_log: list | None = None) -> nn.Module:
    """IAD's first phase (BackdoorBench's ``train_mask_step``, ``clean_train_epochs`` = 25 epochs): the mask network
    alone on clean ``(image, label)`` data, Adam at ``lr_mask`` (betas 0.5, 0.9), the rate divided by 10 after 40 %
    and 80 % of the epochs (its milestones 10 and 20 of 25), on λ_norm · norm + λ_div · diversity. (The code
    multiplies the diversity term by λ_div twice; with λ_div = 1 that is the same.) Returns the network in eval
    mode with its parameters frozen, as the second phase uses it. ``loss_log`` receives each step's loss."""
    from clipdef.env import progress_bar

    s = settings or InputAwareSettings()
    _check_trainable(dataset, epochs, batch_size)
    opt = torch.optim.Adam(mask_net.parameters(), lr=s.lr_mask, betas=(0.5, 0.9))
    milestones = sorted({max(1, round(epochs * f)) for f in (0.4, 0.8)})
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=0.1)
    loader1, loader2 = _paired_loaders(dataset, batch_size, seed)
    mask_net.train()
    for epoch in range(epochs):
        for (x1, _, _), (x2, _, _) in progress_bar(zip(loader1, loader2), enabled=progress, leave=False,
                                                   total=len(loader1), desc=f"IAD mask epoch {epoch + 1}/{epochs}"):
            if augment is not None:
                x1, x2 = augment(x1), augment(x2)
            m1, m2 = threshold(mask_net(x1)), threshold(mask_net(x2))
            loss = s.lambda_norm * mask_norm_loss(m1, s.mask_density) + \
                s.lambda_div * diversity_loss(x1, x2, m1, m2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if loss_log is not None:
                loss_log.append(loss.item())
        schedule.step()
    return mask_net.eval().requires_grad_(False)


def backdoor_count(rate: float, batch: int, rng: np.random.Generator) -> int:
    """Backdoor samples in a batch: rate · batch, rounded at random so that the expected count is exact
    (BackdoorBench's ``generalize_to_lower_pratio`` does this below one sample per batch and truncates above)."""
    expected = rate * batch
    whole = math.floor(expected)
    return min(batch // 2, whole + int(rng.random() < expected - whole))  # room for as many cross samples


def inputaware_batch(classifier: nn.Module, generator: nn.Module, mask_net: nn.Module, x1: torch.Tensor,
                     y1: torch.Tensor, x2: torch.Tensor, target_class: int, n_backdoor: int,
                     settings: InputAwareSettings) -> tuple[torch.Tensor, dict]:
    """One batch of IAD's joint training (BackdoorBench's ``train_step``): the first ``n_backdoor`` images carry
    their own trigger and the target label, the next ``n_backdoor`` the trigger of their partner in ``x2`` and keep
    their label, the rest are clean; loss = cross-entropy of the whole batch + λ_div · diversity of G's patterns
    (backdoor images against their partners). Returns the loss and its parts."""
    n = n_backdoor
    if n == 0:  # a batch without backdoor samples (very low rates): clean training only
        inputs, labels, div = x1, y1, x1.new_zeros(())
    else:
        patterns1, patterns2 = generator(x1[:n]), generator(x2[n:2 * n])
        backdoor = blend(x1[:n], patterns1, threshold(mask_net(x1[:n])))
        cross = blend(x1[n:2 * n], patterns2, threshold(mask_net(x2[n:2 * n])))
        inputs = torch.cat([backdoor, cross, x1[2 * n:]])
        labels = torch.cat([torch.full_like(y1[:n], target_class), y1[n:]])
        div = diversity_loss(x1[:n], x2[n:2 * n], patterns1, patterns2)
    logits = classifier(inputs)
    ce = F.cross_entropy(logits, labels)
    loss = ce + settings.lambda_div * div
    backdoor_hits = (logits[:n].argmax(1) == target_class).float().mean().item() if n else float("nan")
    return loss, {"loss": loss.item(), "ce": ce.item(), "diversity": div.item(), "backdoor_acc": backdoor_hits}


def train_inputaware_victim(classifier: nn.Module, generator: nn.Module, mask_net: nn.Module, dataset,
                            target_class: int, settings: InputAwareSettings | None = None, *, epochs: int,
                            lr: float, rate: float = 0.1, batch_size: int = 128, seed: int = 0,
                            augment: Callable | None = None, warmup_epochs: float = 1.0, progress: bool = True):
    """IAD's second phase: the classifier and the pattern generator trained jointly, the mask network frozen
    (:func:`inputaware_batch` on every batch). The classifier takes the book's victim optimiser (SGD with Nesterov
    momentum 0.9, weight decay 5e-4, ``lr`` with a linear warm-up and cosine decay, as
    :func:`clipdef.train.train_classifier`), where BackdoorBench keeps lr_C constant (its milestones lie beyond
    its 100 epochs); G takes Adam at ``lr_generator`` (betas 0.5, 0.9), constant likewise. ``rate``: the
    backdoor share of every batch (``pratio``), as many cross samples again. Returns the history
    (:class:`clipdef.train.History`); both networks are left in eval mode."""
    from clipdef.env import progress_bar
    from clipdef.train import History, TrainingDiverged, cosine_with_warmup

    s = settings or InputAwareSettings()
    _check_trainable(dataset, epochs, batch_size)
    check_range("rate", rate, 0.0, 0.5)
    check_range("lr", lr, 0.0, float("inf"), inclusive_low=False)
    mask_net.eval().requires_grad_(False)
    opt_c = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    opt_g = torch.optim.Adam(generator.parameters(), lr=s.lr_generator, betas=(0.5, 0.9))
    loader1, loader2 = _paired_loaders(dataset, batch_size, seed)
    total = max(1, epochs * len(loader1))
    warmup = int(warmup_epochs * len(loader1))
    schedule = torch.optim.lr_scheduler.LambdaLR(opt_c, lambda step: cosine_with_warmup(step, total, warmup))
    rng = np.random.default_rng([seed, 15])
    history = History()
    for epoch in range(epochs):
        classifier.train(), generator.train()
        for (x1, y1, _), (x2, _, _) in progress_bar(zip(loader1, loader2), enabled=progress, leave=False,
                                                    total=len(loader1), desc=f"IAD victim epoch {epoch + 1}/{epochs}"):
            if augment is not None:
                x1, x2 = augment(x1), augment(x2)
            n = backdoor_count(rate, len(x1), rng)
            loss, logs = inputaware_batch(classifier, generator, mask_net, x1, y1, x2, target_class, n, s)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch + 1} of the IAD victim; lower "
                                       "the learning rate")
            opt_c.zero_grad(set_to_none=True)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            opt_c.step()
            opt_g.step()
            schedule.step()
            history.steps.append({"epoch": epoch + 1, "step": len(history.steps), **logs})
    classifier.eval(), generator.eval()
    return history


__all__ = ["InputAware", "InputAwareGenerator", "InputAwareSettings", "train_mask_generator",
           "train_inputaware_victim", "inputaware_batch", "diversity_loss", "mask_norm_loss", "threshold", "blend"]
