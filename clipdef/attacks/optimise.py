"""Model-dependent steps of the supervised attacks: the adversarial step of clean-label attacks, the LF universal
low-frequency perturbation, and the TrojanNN patch that excites chosen neurons.

All of them leave the model as they found it: gradients are taken with respect to the images or the trigger only
(``torch.autograd.grad``), so no ``.grad`` is written into the model's parameters, and its train/eval mode is
restored.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from clipdef.attacks.base import check_int, check_range, seeded_generator
from clipdef.attacks.patches import LOCATIONS, default_patch_size, paste
from clipdef.attacks.signals import default_lowpass_sigma, gaussian_lowpass


@contextmanager
def evaluating(model):
    """Eval mode for the duration (if ``model`` is a module), then the previous mode back."""
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def adversarial_perturb(model_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels,
                        eps: float = 16 / 255, steps: int = 10, step_size: float | None = None,
                        random_start: bool = False, batch_size: int = 256, seed: int = 0,
                        loss_log: list | None = None, progress: bool = False) -> torch.Tensor:
    """PGD away from the true label inside an L∞ ball of radius ``eps`` (Turner et al. 2019: target-class images
    are made hard to classify from their content, so the model learns the trigger instead).

    ``model_fn`` maps images in [0, 1] to logits (pass a model in eval mode, or a function that normalises
    first). Defaults: ε = 16/255 (the reference's value for LC; BackdoorBench's ``craft_adv_dataset.py`` uses
    ε = 8/255, step 1.5/255, 100 steps), 10 steps of 2.5·ε/steps (Madry et al.'s rule). ``loss_log`` receives
    the cross-entropy of every step (of the last batch), which should rise."""
    from clipdef.env import progress_bar

    check_range("eps", eps, 0.0, 1.0, inclusive_low=False)
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    step_size = check_range("step_size", step_size, 0.0, 1.0, inclusive_low=False) if step_size is not None \
        else 2.5 * eps / steps
    labels = torch.as_tensor(labels, device=images.device)
    out = []
    with evaluating(model_fn):
        for start in progress_bar(range(0, len(images), batch_size), enabled=progress, desc="adversarial step"):
            clean = images[start:start + batch_size].detach()
            target = labels[start:start + batch_size]
            x = clean.clone()
            if random_start:
                gen = seeded_generator(seed, "pgd-start", start)
                x = (x + (torch.rand(x.shape, generator=gen) * 2 - 1).to(x) * eps).clamp(0, 1)
            for _ in range(steps):
                x.requires_grad_(True)
                loss = F.cross_entropy(model_fn(x), target)
                (grad,) = torch.autograd.grad(loss, x)
                with torch.no_grad():
                    x = x + step_size * grad.sign()
                    x = (clean + (x - clean).clamp(-eps, eps)).clamp(0, 1)
                if loss_log is not None:
                    loss_log.append(loss.item())
            out.append(x.detach())
    return torch.cat(out) if out else images.clone()


def adversarial_step(model_fn: Callable[[torch.Tensor], torch.Tensor], **pgd) -> Callable:
    """``perturb_fn(images, labels)`` for :class:`clipdef.poison.PoisonedLabels`: :func:`adversarial_perturb`
    with the given settings, e.g. ``PoisonedLabels(ds, "lc", ..., perturb_fn=adversarial_step(net, eps=8/255))``."""
    return lambda images, labels: adversarial_perturb(model_fn, images, labels, **pgd)


def optimise_low_frequency_trigger(model_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                                   target: int, eps: float = 0.1, sigma: float | None = None, steps: int = 50,
                                   lr: float = 0.01, batch_size: int = 128, seed: int = 0,
                                   loss_log: list | None = None, progress: bool = False) -> torch.Tensor:
    """A universal perturbation δ (3, H, W) toward ``target``, low-pass filtered after every step (LF, Zeng et al.
    ICCV 2021). Adam on the mean cross-entropy to the target over random batches; after each step δ is clipped to
    ‖δ‖∞ ≤ ``eps`` and blurred with a Gaussian of std ``sigma`` px (default: BackdoorBench's 6 px at 32, scaled),
    which keeps it bounded (a blur never raises the maximum) and low-frequency. BackdoorBench builds its LF
    patterns with DeepFool-based universal perturbations, smoothed the same way, normalised to a 0.2 range
    (hence ε = 0.1 here)."""
    from clipdef.env import progress_bar

    check_range("eps", eps, 0.0, 1.0, inclusive_low=False)
    check_int("steps", steps, 1)
    h, w = images.shape[-2:]
    sigma = sigma or default_lowpass_sigma(h, w)
    gen = seeded_generator(seed, "lf-batches")
    delta = torch.zeros(1, 3, h, w, device=images.device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    with evaluating(model_fn):
        for _ in progress_bar(range(steps), enabled=progress, desc="optimise LF trigger"):
            idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=gen)
            batch = images[idx.to(images.device)]
            logits = model_fn((batch + delta).clamp(0, 1))
            loss = F.cross_entropy(logits, torch.full((len(idx),), int(target), device=logits.device))
            (delta.grad,) = torch.autograd.grad(loss, delta)
            opt.step()
            with torch.no_grad():
                delta.copy_(gaussian_lowpass(delta.clamp(-eps, eps), sigma))
            if loss_log is not None:
                loss_log.append(loss.item())
    return delta.detach()[0].cpu()


def most_connected_neurons(layer: torch.nn.Module, k: int) -> list[int]:
    """TrojanNN's neuron choice: the ``k`` units of ``layer`` with the strongest incoming weights (mean |w| over
    each unit's row of the weight; conv channels count as units). In a block the units are those of its last
    registered convolution or linear map (a residual block's output convolution); normalisation weights are 1-D
    and connect nothing, so they are skipped."""
    weights = [p for n, p in layer.named_parameters() if n.endswith("weight") and p.ndim >= 2]
    if not weights:
        raise ValueError("the chosen layer has no convolution or linear weight to select neurons from; pass "
                         "neurons=[indices]")
    return weights[-1].detach().abs().flatten(1).mean(1).topk(k).indices.tolist()


def _unit_activations(output: torch.Tensor) -> torch.Tensor:
    """(B, units): conv feature maps are averaged over space."""
    return output.mean(dim=tuple(range(2, output.ndim))) if output.ndim > 2 else output


def optimise_trojannn_patch(model: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor | None = None,
                            neurons: int | Sequence[int] = 2, patch_size: int | None = None, steps: int = 100,
                            lr: float = 0.05, seed: int = 0, location: str = "corner",
                            mask: torch.Tensor | None = None, image_size: int = 32,
                            loss_log: list | None = None, progress: bool = False) -> tuple[torch.Tensor, list[int]]:
    """A patch (3, s, s) that maximises the mean activation of chosen units of ``layer`` (a forward hook reads it)
    when pasted at ``location`` (through ``mask`` if given). ``neurons``: a count (the most connected units,
    :func:`most_connected_neurons`) or explicit indices. ``images``: the images to paste onto (default: mid-grey
    canvases of ``image_size``). TrojanNN drives the neurons toward a high target value; maximising the mean is the
    same direction without a target to tune. Returns the patch and the chosen unit indices."""
    from clipdef.env import progress_bar

    check_int("steps", steps, 1)
    if images is None:
        images = torch.full((8, 3, image_size, image_size), 0.5)
    chosen = most_connected_neurons(layer, neurons) if isinstance(neurons, int) else [int(n) for n in neurons]
    if location not in LOCATIONS:
        raise ValueError(f"location must be one of {LOCATIONS}, got {location!r}")
    size = mask.shape[-1] if mask is not None else patch_size or default_patch_size(min(images.shape[-2:]))
    captured = {}
    handle = layer.register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))
    patch = torch.rand(3, size, size, generator=seeded_generator(seed, "trojannn-init")).to(images.device)
    patch.requires_grad_(True)
    opt = torch.optim.Adam([patch], lr=lr)
    ids = list(range(len(images)))
    try:
        with evaluating(model):
            for _ in progress_bar(range(steps), enabled=progress, desc="optimise TrojanNN patch"):
                model(paste(images.detach().clone(), patch.clamp(0, 1), location, seed, ids, mask=mask))
                loss = -_unit_activations(captured["out"])[:, chosen].mean()
                (patch.grad,) = torch.autograd.grad(loss, patch)
                opt.step()
                with torch.no_grad():
                    patch.clamp_(0, 1)
                if loss_log is not None:
                    loss_log.append(loss.item())
    finally:
        handle.remove()
    return patch.detach().cpu(), chosen


def neuron_activation(model: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor, neurons) -> float:
    """Mean activation of the chosen units of ``layer`` on ``images`` (to check the TrojanNN optimisation)."""
    captured = {}
    handle = layer.register_forward_hook(lambda m, i, o: captured.__setitem__("out", o))
    try:
        with torch.no_grad(), evaluating(model):
            model(images)
    finally:
        handle.remove()
    return float(_unit_activations(captured["out"])[:, list(neurons)].mean())


__all__ = ["adversarial_perturb", "adversarial_step", "optimise_low_frequency_trigger", "optimise_trojannn_patch",
           "most_connected_neurons", "neuron_activation", "paste"]
