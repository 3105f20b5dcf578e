"""Baselines for supervised victims trained on poisoned data: fine-tuning on a trusted subset, and spectral-signature
filtering followed by re-training (Tran et al., NeurIPS 2018)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from clipdef.detect import score as detect_score
from clipdef.train import train_classifier


def finetune_on_subset(victim: torch.nn.Module, train_set: Dataset, keep: np.ndarray, epochs: int = 5,
                       lr: float = 0.01, batch_size: int = 128, seed: int = 0, progress: bool = True):
    """Fine-tune a copy of the victim with cross-entropy on the samples in ``keep`` (e.g. CGD's clean split)."""
    keep = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep)
    if len(keep) == 0:
        raise ValueError("the subset to fine-tune on is empty")
    model = copy.deepcopy(victim)
    train_classifier(model, Subset(train_set, keep.tolist()), epochs=epochs, lr=lr, batch_size=batch_size,
                     seed=seed, progress=progress, desc="fine-tune on the clean split")
    return model


@torch.no_grad()
def penultimate_features(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    model.eval()
    return torch.cat([model.features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]).numpy()


def spectral_filter(model: torch.nn.Module, images: torch.Tensor, labels, remove_fraction: float) -> np.ndarray:
    """Boolean mask of samples to *keep*: per class, the ``remove_fraction`` with the largest spectral-signature
    score (squared projection on the top singular vector of the class's centred features) are removed."""
    if not 0 <= remove_fraction < 1:
        raise ValueError(f"remove_fraction must lie in [0, 1), got {remove_fraction}")
    labels = np.asarray(labels)
    scores = detect_score(penultimate_features(model, images), "spectral", labels=labels)
    keep = np.ones(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_remove = int(round(remove_fraction * len(idx)))
        if n_remove:
            keep[idx[np.argsort(scores[idx])[-n_remove:]]] = False
    return keep
