"""Model-dependent steps of the supervised attacks: the adversarial step of clean-label attacks, the LF universal
low-frequency perturbation, and the TrojanNN patch that excites chosen neurons."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from clipdef.attacks.patches import default_patch_size, paste
from clipdef.attacks.signals import gaussian_lowpass


def adversarial_perturb(model_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels,
                        eps: float = 16 / 255, steps: int = 10, step_size: float | None = None) -> torch.Tensor:
    """PGD away from the true label inside an L∞ ball of radius ``eps`` (Turner et al.: target-class images are
    made hard to classify from their content, so the model learns the trigger instead)."""
    if eps <= 0 or steps < 1:
        raise ValueError(f"need eps > 0 and steps ≥ 1, got {eps}, {steps}")
    step_size = step_size or 2.5 * eps / steps
    labels = torch.as_tensor(labels, device=images.device)
    x = images.clone().detach()
    for _ in range(steps):
        x.requires_grad_(True)
        loss = F.cross_entropy(model_fn(x), labels)
        (grad,) = torch.autograd.grad(loss, x)
        with torch.no_grad():
            x = x + step_size * grad.sign()
            x = (images + (x - images).clamp(-eps, eps)).clamp(0, 1)
    return x.detach()


def optimise_low_frequency_trigger(model_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                                   target: int, eps: float = 0.1, sigma: float | None = None, steps: int = 50,
                                   lr: float = 0.01, batch_size: int = 128, seed: int = 0) -> torch.Tensor:
    """A universal perturbation (3, H, W) toward ``target``, low-pass filtered after every step (LF, Zeng et al.)."""
    h, w = images.shape[-2:]
    sigma = sigma or max(h, w) / 8
    gen = torch.Generator().manual_seed(seed)
    delta = torch.zeros(1, 3, h, w, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=gen)
        logits = model_fn((images[idx] + delta).clamp(0, 1))
        loss = F.cross_entropy(logits, torch.full((len(idx),), int(target)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            delta.copy_(gaussian_lowpass(delta, sigma).clamp(-eps, eps))
    return delta.detach()[0]


def optimise_trojannn_patch(model: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor,
                            neurons: int = 2, patch_size: int | None = None, steps: int = 100, lr: float = 0.05,
                            seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """A patch (3, s, s) maximising the activation of the ``neurons`` most connected units of ``layer``
    (selected as the channels with the largest mean weight magnitude, as TrojanNN picks well-connected neurons).
    Returns the patch and the chosen channel indices."""
    weight = next((p for n, p in layer.named_parameters() if n.endswith("weight")), None)
    if weight is None:
        raise ValueError("the chosen layer has no weight to select neurons from")
    chosen = weight.detach().abs().flatten(1).mean(1).topk(neurons).indices.tolist()
    captured = {}
    handle = layer.register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))
    size = patch_size or default_patch_size(min(images.shape[-2:])) + 1
    patch = torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    opt = torch.optim.Adam([patch], lr=lr)
    model.eval()
    try:
        for _ in range(steps):
            triggered = images.clone()
            h, w = images.shape[-2:]
            triggered[..., h - size:, w - size:] = patch.clamp(0, 1)
            model(triggered)
            act = captured["out"]
            act = act.mean(dim=tuple(range(2, act.ndim))) if act.ndim > 2 else act
            loss = -act[:, chosen].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        handle.remove()
    return patch.detach().clamp(0, 1), chosen


def neuron_activation(model: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor, neurons) -> float:
    """Mean activation of the chosen channels of ``layer`` on ``images`` (to check the TrojanNN optimisation)."""
    captured = {}
    handle = layer.register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    act = captured["out"]
    act = act.mean(dim=tuple(range(2, act.ndim))) if act.ndim > 2 else act
    return float(act[:, list(neurons)].mean())


__all__ = ["adversarial_perturb", "optimise_low_frequency_trigger", "optimise_trojannn_patch", "paste"]
