"""Zero-shot classification, top-k clean accuracy and top-k attack success rate (ASR).

The zero-shot classifier follows every CLIP repository: for each class, average the L2-normalised text embeddings
of its prompt templates and re-normalise; logits are 100 · ⟨image, class⟩.

ASR follows the detection paper: images whose true class is the target are removed, the trigger is applied to all
the others, and ASR@k is the share whose top-k predictions contain the target.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from clipdef.models import ClipBundle, encode_images, encode_texts

KS = (1, 3, 5, 10)
# Matches the prefixes of the world's simple captions, as the 80 OpenAI templates match ImageNet-era web captions.
WORLD_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a drawing of a {}.", "a {}.")


def templates(kind: str = "world") -> tuple[str, ...]:
    """Prompt templates: ``"world"`` (5, for the embedded world) or ``"openai"`` (the 80 ImageNet templates)."""
    if kind == "world":
        return WORLD_TEMPLATES
    if kind == "openai":
        import open_clip

        return tuple(t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES)
    raise ValueError(f"unknown template set {kind!r}; valid: 'world', 'openai'")


def _fill(template: str, name: str) -> str:
    text = template.format(name)
    # "a orange" → "an orange": the templates are written for consonant-initial class names.
    return text.replace(" a a", " an a").replace(" a e", " an e").replace(" a i", " an i") \
        .replace(" a o", " an o").replace(" a u", " an u").replace("A a", "An a")


@torch.no_grad()
def zero_shot_classifier(bundle: ClipBundle, class_names: Sequence[str], prompt_templates: Sequence[str]):
    """(C, d) class embeddings: the re-normalised mean of the normalised template embeddings of each class."""
    texts = [_fill(t, c) for c in class_names for t in prompt_templates]
    emb = encode_texts(bundle, texts).view(len(class_names), len(prompt_templates), -1)
    return torch.nn.functional.normalize(emb.mean(1), dim=-1)


@torch.no_grad()
def zero_shot_logits(bundle: ClipBundle, images, classifier: torch.Tensor, batch_size: int = 512,
                     progress: bool = False, transform=None) -> torch.Tensor:
    """100 · ⟨image, class⟩ for a tensor of images or a dataset of (image, label); ``transform`` (a trigger) is
    applied to each batch first."""
    emb = encode_images(bundle, images, batch_size=batch_size, progress=progress, transform=transform)
    return 100.0 * emb @ classifier.t()


def topk_hits(logits: torch.Tensor, targets, ks: Sequence[int] = KS) -> dict[int, np.ndarray]:
    """For each k, a boolean array: is the target among the top-k logits of each row? (k is capped at C.)"""
    logits = torch.as_tensor(logits)
    targets = torch.as_tensor(targets).view(-1, 1)
    order = logits.argsort(dim=1, descending=True)
    return {k: (order[:, :min(k, logits.shape[1])] == targets).any(1).numpy() for k in ks}


def topk_accuracy(logits, labels, ks: Sequence[int] = KS) -> dict[str, float]:
    """``{"ca_top1": …, "ca_top5": …}``: the share of rows whose label is among the top-k logits."""
    return {f"ca_top{k}": float(hit.mean()) for k, hit in topk_hits(logits, labels, ks).items()}


def attack_success_rate(logits, target_index: int, ks: Sequence[int] = KS) -> dict[str, float]:
    """``{"asr_top1": …}``: the share of (triggered, non-target) rows whose top-k predictions contain the target."""
    targets = torch.full((len(logits),), int(target_index))
    return {f"asr_top{k}": float(hit.mean()) for k, hit in topk_hits(logits, targets, ks).items()}


def evaluate_clip(bundle: ClipBundle, images, labels, class_names: Sequence[str],
                  prompt_templates: Sequence[str], trigger: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  target: str = "banana", ks: Sequence[int] = KS, batch_size: int = 512,
                  classifier: torch.Tensor | None = None) -> dict[str, float]:
    """Zero-shot clean accuracy (top-k) and, when a trigger is given, ASR (top-k) on the same evaluation set.

    ``images``: a tensor (N, 3, H, W) with ``labels``, or a dataset of (image, label) (``labels`` may be None)."""
    from torch.utils.data import Subset

    if labels is None:
        labels = images.labels if hasattr(images, "labels") else [images[i][1] for i in range(len(images))]
    labels = torch.as_tensor(labels)
    if classifier is None:
        classifier = zero_shot_classifier(bundle, class_names, prompt_templates)
    metrics = topk_accuracy(zero_shot_logits(bundle, images, classifier, batch_size), labels, ks)
    if trigger is not None:
        if target not in class_names:
            raise ValueError(f"target {target!r} is not one of the class names; ASR needs the target class")
        target_index = list(class_names).index(target)
        keep = torch.nonzero(labels != target_index).squeeze(1)
        others = images[keep] if isinstance(images, torch.Tensor) else Subset(images, keep.tolist())
        metrics.update(attack_success_rate(zero_shot_logits(bundle, others, classifier, batch_size,
                                                            transform=trigger), target_index, ks))
    return metrics


def chance_topk(num_classes: int, ks: Sequence[int] = KS) -> dict[str, float]:
    """Top-k accuracy of a random guess: k / C."""
    return {f"ca_top{k}": min(k, num_classes) / num_classes for k in ks}
