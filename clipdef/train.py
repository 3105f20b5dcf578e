"""One contrastive training loop shared by pre-training, poisoned fine-tuning and the fine-tuning defenses.

The loss is pluggable: ``loss_fn(bundle, images, captions, indices) -> (loss, logs)``, optionally with a
``start_epoch(epoch)`` method for per-epoch state. The default is the CLIP loss; CleanCLIP and CleanerCLIP pass
their own. The loop checkpoints atomically every epoch, resumes from the last
good checkpoint, and stops with a clear error (naming the step and the last good checkpoint) on a NaN/inf loss.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from clipdef.losses import clip_loss
from clipdef.models import ClipBundle, load_checkpoint, save_checkpoint

LossFn = Callable[[ClipBundle, torch.Tensor, list, torch.Tensor], tuple[torch.Tensor, dict]]
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learned temperature at 1/100


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class History:
    """Per-step logs of a training run (loss and whatever the loss function reports)."""

    steps: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.steps)


def default_clip_loss(bundle: ClipBundle, images: torch.Tensor, captions: list, indices: torch.Tensor):
    model = bundle.model
    image_emb = model.encode_image(bundle.prepare_images(images), normalize=True)
    text_emb = model.encode_text(bundle.tokenize(captions), normalize=True)
    scale = model.logit_scale.exp()
    loss = clip_loss(image_emb, text_emb, scale)
    return loss, {"loss": loss.item(), "logit_scale": scale.item()}


class _Indexed(Dataset):
    """Wraps a dataset so batches also carry the sample indices (losses that treat samples differently need them)."""

    def __init__(self, base):
        self.base = base

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        image, text = self.base[i]
        return image, text, i


def _collate(batch):
    images, texts, idx = zip(*batch)
    return torch.stack(images), list(texts), torch.tensor(idx)


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(model: torch.nn.Module, weight_decay: float):
    """Weight decay on weights only: not on gains, biases, norms, embeddings of position or the logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name or "positional" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_contrastive(bundle: ClipBundle, dataset: Dataset, *, epochs: int, lr: float, batch_size: int = 256,
                      weight_decay: float = 0.1, warmup_steps: int = 50, loss_fn: LossFn | None = None,
                      seed: int = 0, checkpoint: str | Path | None = None, progress: bool = True,
                      desc: str = "train", num_workers: int = 0,
                      on_epoch_end: Callable[[int, ClipBundle], dict] | None = None) -> History:
    """Train ``bundle.model`` in place with AdamW + warm-up/cosine; returns the per-step history.

    ``checkpoint``: a path prefix; after every epoch the weights (``.safetensors``) and the optimiser/schedule
    state (``.state.pt``) are written atomically, so a killed run resumes where it stopped.
    ``on_epoch_end(epoch, bundle)`` may return metrics that are logged with the epoch (e.g. ASR vs epoch)."""
    from clipdef.env import progress_bar

    if len(dataset) == 0:
        raise ValueError("the training set is empty: nothing to train on (check the data path or the poison "
                         "filter that produced it)")
    if epochs < 0 or lr <= 0 or batch_size < 1:
        raise ValueError(f"need epochs ≥ 0, lr > 0 and batch_size ≥ 1; got {epochs}, {lr}, {batch_size}")
    loss_fn = loss_fn or default_clip_loss
    model = bundle.model
    batch_size = min(batch_size, len(dataset))
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(_Indexed(dataset), batch_size=batch_size, shuffle=True, drop_last=True,
                        collate_fn=_collate, generator=generator, num_workers=num_workers)
    total_steps = epochs * len(loader)
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s, total_steps, min(warmup_steps, max(1, total_steps // 5))))
    history, start_epoch = History(), 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None:
        start_epoch = _resume(bundle, optimizer, scheduler, generator, history, ckpt)
    t0 = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        model.train()
        if hasattr(loss_fn, "start_epoch"):  # losses with per-epoch state (CleanerCLIP redraws its subset)
            loss_fn.start_epoch(epoch + 1)
        bar = progress_bar(loader, desc=f"{desc} epoch {epoch + 1}/{epochs}", enabled=progress, leave=False)
        for images, captions, idx in bar:
            loss, logs = loss_fn(bundle, images, captions, idx)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {float(loss)} at epoch {epoch + 1}, step {len(history.steps)} of {desc}; "
                    f"last good checkpoint: {ckpt.with_suffix('.safetensors') if ckpt else 'none (no checkpoint path)'}. "
                    "Lower the learning rate or check the data for broken images.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            history.steps.append({"epoch": epoch + 1, "step": len(history.steps), **logs})
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if on_epoch_end is not None:
            history.steps[-1].update(on_epoch_end(epoch + 1, bundle) or {})
        if ckpt is not None:
            _save_state(bundle, optimizer, scheduler, generator, history, epoch + 1, ckpt)
    history.seconds += time.perf_counter() - t0
    model.eval()
    return history


def _save_state(bundle, optimizer, scheduler, generator, history, epoch, ckpt: Path) -> None:
    from clipdef.env import atomic_path

    save_checkpoint(bundle.model, ckpt.with_suffix(".safetensors"), meta={"epoch": epoch, "model": bundle.name})
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
             "generator": generator.get_state()}
    with atomic_path(ckpt.with_suffix(".state.pt")) as tmp:
        torch.save(state, tmp)
    with atomic_path(ckpt.with_suffix(".history.json")) as tmp:
        tmp.write_text(json.dumps(history.steps))


def _resume(bundle, optimizer, scheduler, generator, history, ckpt: Path) -> int:
    """Load the last complete epoch's state if there is one; return the epoch to start from."""
    weights, state_path = ckpt.with_suffix(".safetensors"), ckpt.with_suffix(".state.pt")
    if not (weights.exists() and state_path.exists()):
        return 0
    meta = load_checkpoint(bundle.model, weights)
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if state["epoch"] != meta.get("epoch"):
        raise RuntimeError(f"{weights} (epoch {meta.get('epoch')}) and {state_path} (epoch {state['epoch']}) "
                           "disagree; delete both to restart this training run")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    hist = ckpt.with_suffix(".history.json")
    if hist.exists():
        history.steps.extend(json.loads(hist.read_text()))
    return int(state["epoch"])


# ---------------------------------------------------------------------------------------------------------------
# The tiny CLIP of the book
# ---------------------------------------------------------------------------------------------------------------

def pretrain_config(cfg) -> dict:
    """The fields of a profile that determine the pre-trained tiny CLIP (its cache key)."""
    return {k: getattr(cfg, k) for k in ("model", "image_size", "n_pretrain", "pretrain_epochs", "pretrain_lr",
                                         "batch_size", "weight_decay", "warmup_steps", "seed")}


def pretrained_clip(cfg, progress: bool = True) -> ClipBundle:
    """The profile's clean CLIP: real weights when ``cfg.pretrained`` is set, else the tiny CLIP pre-trained by
    the book on the world — trained once, then loaded from the cache (keyed by :func:`pretrain_config`)."""
    from clipdef.data import world_pairs
    from clipdef.env import cache_dir, config_key, pick_device
    from clipdef.models import create_clip

    device = pick_device(cfg.device)
    if cfg.pretrained is not None:
        return create_clip(cfg.model, cfg.pretrained, device=device)
    if cfg.data != "world":
        raise ValueError(f"profile {cfg.name!r} has no pretrained weights and no world to pre-train on; "
                         "set pretrained=... (a tag or a file)")
    key = config_key(pretrain_config(cfg))
    prefix = cache_dir() / "models" / f"{cfg.model}-pretrain-{key}"
    bundle = create_clip(cfg.model, None, device=device, seed=cfg.seed)
    final = prefix.with_name(prefix.name + "-final.safetensors")
    if final.exists():
        load_checkpoint(bundle.model, final)
        return bundle
    train_contrastive(bundle, world_pairs(cfg, "pretrain"), epochs=cfg.pretrain_epochs, lr=cfg.pretrain_lr,
                      batch_size=cfg.batch_size, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                      seed=cfg.seed, checkpoint=prefix, progress=progress, desc="pre-train tiny CLIP")
    save_checkpoint(bundle.model, final, meta={"pretrain_config": pretrain_config(cfg)})
    return bundle


def pretraining_history(cfg):
    """The per-step log of the cached tiny-CLIP pre-training run, as a DataFrame (empty if there is none)."""
    import pandas as pd

    from clipdef.env import cache_dir, config_key

    path = cache_dir() / "models" / f"{cfg.model}-pretrain-{config_key(pretrain_config(cfg))}.history.json"
    return pd.DataFrame(json.loads(path.read_text())) if path.exists() else pd.DataFrame()


def set_threads(n: int | None = None) -> None:
    """Use all cores for intra-op parallelism on CPU (PyTorch picks fewer in some containers), unless
    ``$OMP_NUM_THREADS`` says otherwise: parallel test workers each running 2 spinning OpenMP threads on 2 cores
    slow every one of them down several-fold."""
    import os

    limit = os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(n or (int(limit) if limit and limit.isdigit() else os.cpu_count()) or 1)



# ---------------------------------------------------------------------------------------------------------------
# The classifier loop (supervised victims, CGD's suspicious model and unlearning)
# ---------------------------------------------------------------------------------------------------------------

def train_classifier(model: torch.nn.Module, dataset: Dataset, *, epochs: int, lr: float, batch_size: int = 128,
                     weight_decay: float = 5e-4, optimizer: str = "sgd", seed: int = 0,
                     loss_fn: Callable | None = None, progress: bool = True, desc: str = "train classifier",
                     augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     on_epoch_end: Callable[[int, torch.nn.Module], dict | None] | None = None) -> History:
    """Train a classifier on ``(image, label)`` pairs (SGD with momentum + cosine, or Adam); returns the history.

    ``loss_fn(model, images, labels, indices) -> (loss, logs)`` replaces cross-entropy (CGD's unlearning loss).
    ``on_epoch_end`` may return metrics (logged) or ``{"stop": True}`` to stop early (held-out early stopping)."""
    from clipdef.env import progress_bar

    if len(dataset) == 0:
        raise ValueError("the training set is empty: nothing to train on")
    if epochs < 0 or lr <= 0 or batch_size < 1:
        raise ValueError(f"need epochs ≥ 0, lr > 0 and batch_size ≥ 1; got {epochs}, {lr}, {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(_Indexed(dataset), batch_size=min(batch_size, len(dataset)), shuffle=True,
                        collate_fn=_collate_labelled, generator=generator)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: 'sgd', 'adam'")
    total = max(1, epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, total, 0))
    history = History()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for images, labels, idx in progress_bar(loader, enabled=progress, leave=False,
                                                desc=f"{desc} epoch {epoch + 1}/{epochs}"):
            if augment is not None:
                images = augment(images)
            if loss_fn is None:
                loss = torch.nn.functional.cross_entropy(model(images), labels)
                logs = {"loss": loss.item()}
            else:
                loss, logs = loss_fn(model, images, labels, idx)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch + 1}, step "
                                       f"{len(history.steps)} of {desc}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            scheduler.step()
            history.steps.append({"epoch": epoch + 1, "step": len(history.steps), **logs})
        if on_epoch_end is not None:
            extra = on_epoch_end(epoch + 1, model) or {}
            history.steps[-1].update(extra)
            if extra.get("stop"):
                break
    history.seconds += time.perf_counter() - t0
    model.eval()
    return history


def _collate_labelled(batch):
    images, labels, idx = zip(*batch)
    return torch.stack(images), torch.as_tensor(labels), torch.tensor(idx)


@torch.no_grad()
def classifier_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def random_crop_flip(images: torch.Tensor, pad: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    """The usual small-image augmentation: random translation by up to ``pad`` pixels and horizontal flip."""
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad), mode="reflect")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    out = padded[..., dy:dy + h, dx:dx + w]
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip.view(b, 1, 1, 1), out.flip(-1), out)
