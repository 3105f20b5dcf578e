"""Model-dependent steps of the supervised attacks: the adversarial step of clean-label attacks, the LF universal
low-frequency perturbation, and the TrojanNN trigger that drives chosen neurons to a target value.

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
                                   target: int, eps: float = 0.2, sigma: float | None = None, steps: int = 50,
                                   lr: float = 0.01, batch_size: int = 128, seed: int = 0,
                                   loss_log: list | None = None, progress: bool = False) -> torch.Tensor:
    """LF's universal low-frequency perturbation toward ``target`` (Zeng et al. ICCV 2021), in the form BackdoorBench
    gives it (``resource/lowFrequency/universal_pert.py``): after every update the pattern is blurred with a
    Gaussian of std ``sigma`` px (``gauss_smooth``, 6 px at 32, scaled) and min–max normalised to [0, ``eps``]
    (``normalization``, eps = 0.2), so it stays positive, bounded and low-frequency. The update itself is an Adam
    step on the mean cross-entropy to the target of clip(x + p) over random batches, where BackdoorBench adds targeted
    DeepFool steps image by image: the same universal direction toward the target, in fewer, batched steps.
    ``loss_log`` receives the loss of every step. Returns p (3, H, W) on the CPU, values in [0, eps]."""
    from clipdef.attacks.signals import normalised_to_range
    from clipdef.env import progress_bar

    check_range("eps", eps, 0.0, 1.0, inclusive_low=False)
    check_int("steps", steps, 1)
    check_int("batch_size", batch_size, 1)
    if len(images) == 0:
        raise ValueError("need some images to optimise the LF perturbation on")
    h, w = images.shape[-2:]
    sigma = sigma or default_lowpass_sigma(h, w)
    gen = seeded_generator(seed, "lf-batches")
    pattern = torch.zeros(1, 3, h, w, device=images.device, requires_grad=True)  # BackdoorBench starts from v = 0
    opt = torch.optim.Adam([pattern], lr=lr)
    with evaluating(model_fn):
        for _ in progress_bar(range(steps), enabled=progress, desc="optimise LF trigger"):
            idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=gen)
            batch = images[idx.to(images.device)]
            logits = model_fn((batch + pattern).clamp(0, 1))
            loss = F.cross_entropy(logits, torch.full((len(idx),), int(target), device=logits.device))
            (pattern.grad,) = torch.autograd.grad(loss, pattern)
            opt.step()
            with torch.no_grad():
                pattern.copy_(normalised_to_range(gaussian_lowpass(pattern, sigma), eps))
            if loss_log is not None:
                loss_log.append(loss.item())
    return pattern.detach()[0].cpu()


def most_connected_neurons(layer: torch.nn.Module, k: int) -> list[int]:
    """TrojanNN's neuron choice as BackdoorBench makes it (``get_most_connected_neuron_idxes``): the ``k`` units
    that feed ``layer`` (a linear map or a convolution) with the largest total |weight| in it — the column sums of
    |W| over the layer's outputs (a convolution's kernels summed over space first). For the victims' classifier head
    these are the penultimate features that weigh most on the logits."""
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim not in (2, 4):
        raise ValueError(f"TrojanNN selects neurons of a linear or convolutional layer, got {type(layer).__name__}; "
                         "pass neurons=[indices]")
    check_int("neurons", k, 1, weight.shape[1])
    strength = weight.detach().abs().flatten(2).sum(2) if weight.ndim == 4 else weight.detach().abs()
    return strength.sum(0).argsort(descending=True)[:k].tolist()


def _layer_input(model: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What ``layer`` receives when ``model`` runs on ``images`` (BackdoorBench hooks the selected layer's input)."""
    captured = {}
    handle = layer.register_forward_hook(lambda m, inputs, output: captured.__setitem__("in", inputs[0]))
    try:
        model(images)
    finally:
        handle.remove()
    return captured["in"]


def optimise_trojannn_trigger(model: torch.nn.Module, layer: torch.nn.Module, mask: str | torch.Tensor = "apple",
                              image_size: int = 32, neurons: int | Sequence[int] = 2, target_value: float = 100.0,
                              steps: int = 1000, eps: float = 0.3, step_size: float = 0.1, tolerance: float = 1e-3,
                              loss_log: list | None = None, progress: bool = False) -> tuple[torch.Tensor, list[int]]:
    """TrojanNN's trigger as BackdoorBench makes it (``attack/trojannn.py``, ``pgd_with_mask_to_selected_neuron``;
    ``config/attack/trojannn/preactresnet18.yaml``: layer ``linear``, 2 neurons, target value 100, 1,000 steps,
    mask ``apple4.png``).

    The mask image (white inside the mask, black outside) is the starting point; with the model in eval mode, signed
    gradient steps of ``step_size`` = 0.1 inside an L∞ ball of ``eps`` = 0.3 around it lower
    Σ_k Σ_batch (a_k − ``target_value``)², where a_k are the chosen inputs of ``layer`` (for the victims' head:
    penultimate features) on the masked image alone — pixels outside the mask are zero in the model's input, so
    they get no gradient and stay zero. It stops early once the cost is below ``tolerance``. ``neurons``: a count
    (:func:`most_connected_neurons`) or explicit indices. Returns the pattern (3, s, s), zero outside the mask,
    which :class:`clipdef.attacks.patches.TrojanNN` adds to images, and the chosen indices. ``loss_log`` receives
    the cost of every step, which falls.

    BackdoorBench loads the clean model's weights into a 1,000-class copy, whose head does not match and stays
    random, so its neuron choice is in effect random; here it reads the surrogate's trained head, TrojanNN's intent.
    """
    from clipdef.attacks.patches import TrojanNN
    from clipdef.env import progress_bar

    check_int("steps", steps, 1)
    check_int("image_size", image_size, 1)
    check_range("eps", eps, 0.0, 1.0, inclusive_low=False)
    check_range("step_size", step_size, 0.0, 1.0, inclusive_low=False)
    check_range("target_value", target_value, -float("inf"), float("inf"))
    check_range("tolerance", tolerance, 0.0, float("inf"))
    chosen = most_connected_neurons(layer, neurons) if isinstance(neurons, int) else [int(n) for n in neurons]
    if not chosen:
        raise ValueError("neurons must be a positive count or a non-empty list of indices")
    device = next(model.parameters()).device
    start = TrojanNN(mask=mask).mask_image(image_size, image_size)[None].to(device)
    keep = start > 0
    x = start.clone()
    with evaluating(model):
        for _ in progress_bar(range(steps), enabled=progress, desc="optimise TrojanNN trigger"):
            x.requires_grad_(True)
            features = _layer_input(model, layer, x * keep)
            cost = sum(((features[:, n] - target_value) ** 2).sum() for n in chosen)
            (grad,) = torch.autograd.grad(cost, x)
            with torch.no_grad():
                x = (start + (x - step_size * grad.sign() - start).clamp(-eps, eps)).clamp(0, 1)
            if loss_log is not None:
                loss_log.append(cost.item())
            if cost.item() < tolerance:
                break
    return (x * keep).detach()[0].cpu(), chosen


def selected_activation(model: torch.nn.Module, layer: torch.nn.Module, images: torch.Tensor, neurons) -> float:
    """Mean of the chosen inputs of ``layer`` on ``images`` (to check the TrojanNN optimisation)."""
    with torch.no_grad(), evaluating(model):
        features = _layer_input(model, layer, images)
    return float(features[:, list(neurons)].mean())


__all__ = ["adversarial_perturb", "adversarial_step", "optimise_low_frequency_trigger", "optimise_trojannn_trigger",
           "most_connected_neurons", "selected_activation"]
