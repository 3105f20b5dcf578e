"""One contrastive training loop shared by pre-training, poisoned fine-tuning and the fine-tuning defenses.

The loss is pluggable: ``loss_fn(bundle, images, captions, indices) -> (loss, logs)``, optionally with a
``start_epoch(epoch)`` method for per-epoch state. The default is the CLIP loss; CleanCLIP and CleanerCLIP pass
their own. The loop checkpoints atomically every epoch, resumes from the last
good checkpoint, and stops with a clear error (naming the step and the last good checkpoint) on a NaN/inf loss.

Under ``torchrun`` (a ``torch.distributed`` process group of world size W > 1, see :mod:`clipdef.distributed`)
the same loop trains data-parallel with DistributedDataParallel; in one process nothing changes.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from clipdef.losses import clip_loss, gather_with_grad, rank_and_world_size
from clipdef.models import ClipBundle, load_checkpoint, save_checkpoint
from clipdef.shards import as_stream

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
    """The CLIP loss of the batch; under data-parallel training, of the global batch (embeddings gathered from
    all ranks with gradient, :func:`clipdef.losses.gather_with_grad`)."""
    model = bundle.model
    image_emb = model.encode_image(bundle.prepare_images(images), normalize=True)
    text_emb = model.encode_text(bundle.tokenize(captions), normalize=True)
    image_emb, text_emb = gather_with_grad(image_emb, text_emb)
    scale = model.logit_scale.exp()
    loss = clip_loss(image_emb, text_emb, scale)
    return loss, {"loss": loss.item(), "logit_scale": scale.item()}


class Indexed(Dataset):
    """A dataset whose items also carry their index (losses that treat samples differently need them)."""

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


class _RankShare(Sampler[int]):
    """This rank's disjoint share of every global batch of an epoch.

    Each epoch the wrapped sampler (a RandomSampler on the run's seeded generator, identical on every rank) gives
    one permutation of the data set; it is cut into global batches of ``per_rank × world`` indices (the last,
    incomplete one dropped) and rank r takes the r-th slice of each. The generator is drawn exactly as a
    single-process run draws it, so when ``per_rank × world`` equals the single-process batch size, the global
    batches are the single-process batches; its state goes into the checkpoint, so a resumed run continues
    with the same permutations."""

    def __init__(self, permutation: Sampler[int], per_rank: int, rank: int, world: int):
        self.permutation, self.per_rank, self.rank, self.world = permutation, per_rank, rank, world
        self.steps = len(permutation) // (per_rank * world)

    def __len__(self) -> int:
        return self.steps * self.per_rank

    def __iter__(self):
        order = list(self.permutation)
        step = self.per_rank * self.world
        for s in range(self.steps):
            start = s * step + self.rank * self.per_rank
            yield from order[start:start + self.per_rank]


class _LossModule(torch.nn.Module):
    """``bundle.model`` as a sub-module and a forward that runs the loss function on the bundle, so that
    DistributedDataParallel's forward and backward hooks see every use of the model's parameters."""

    def __init__(self, bundle: ClipBundle, loss_fn: LossFn):
        super().__init__()
        self.model = bundle.model
        self.bundle, self.loss_fn = bundle, loss_fn

    def forward(self, images, captions, idx):
        return self.loss_fn(self.bundle, images, captions, idx)


def _data_parallel(bundle: ClipBundle, loss_fn: LossFn) -> torch.nn.Module:
    device = bundle.device
    device_ids = None
    if device.type == "cuda":
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
    return torch.nn.parallel.DistributedDataParallel(_LossModule(bundle, loss_fn), device_ids=device_ids)


def _sync_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics follow each rank's own last batch)."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def fused_if_supported(model: torch.nn.Module) -> dict:
    """``{"fused": True}`` where PyTorch has a fused Adam(W) for the model's device (CUDA; CPU from 2.4), else {}:
    the fused update of the tiny CLIP's 4.6 M parameters takes a sixth of the time of the default one on a CPU."""
    device = next(model.parameters()).device
    version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    return {"fused": True} if device.type == "cuda" or (device.type == "cpu" and version >= (2, 4)) else {}


# The contrastive loop's AdamW settings: CLIP's for ViTs (Radford et al. 2021, appendix F), for every stage and
# profile; CleanCLIP's code keeps PyTorch's (0.9, 0.999), 1e-8 (the recipes page lists the difference).
ADAMW_BETAS = (0.9, 0.98)
ADAMW_EPS = 1e-6
# A warm-up is at most this share of a run's steps, so that one set for long runs does not eat a short one.
MAX_WARMUP_SHARE = 0.2


def warmup_length(total_steps: int, warmup_steps: int, max_share: float = MAX_WARMUP_SHARE) -> int:
    """The warm-up a run of ``total_steps`` actually gets: ``warmup_steps``, at most ``max_share`` of the run
    (and at least one step)."""
    return min(warmup_steps, max(1, int(total_steps * max_share)))


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


def _last_good(ckpt: Path | None, epoch: int) -> str:
    """Where a diverged run can restart from: the checkpoint written after the last finished epoch, if any."""
    if ckpt is None:
        return "no checkpoint (no checkpoint path was given)"
    if epoch == 0 or not ckpt.with_suffix(".safetensors").exists():
        return "no checkpoint yet (the first epoch did not finish)"
    return f"last good checkpoint (after epoch {epoch}): {ckpt.with_suffix('.safetensors')}"


def train_contrastive(bundle: ClipBundle, dataset: Dataset, *, epochs: int, lr: float, batch_size: int = 256,
                      weight_decay: float = 0.1, warmup_steps: int = 50, loss_fn: LossFn | None = None,
                      seed: int = 0, checkpoint: str | Path | None = None, progress: bool = True,
                      desc: str = "train", num_workers: int = 0,
                      on_epoch_end: Callable[[int, ClipBundle], dict] | None = None,
                      betas: tuple[float, float] = ADAMW_BETAS, eps: float = ADAMW_EPS,
                      max_warmup_share: float = MAX_WARMUP_SHARE) -> History:
    """Train ``bundle.model`` in place with AdamW + warm-up/cosine; returns the per-step history.

    ``checkpoint``: a path prefix; after every epoch the weights (``.safetensors``) and the optimiser/schedule
    state (``.state.pt``) are written atomically, so a killed run resumes where it stopped.
    ``on_epoch_end(epoch, bundle)`` may return metrics that are logged with the epoch (e.g. ASR vs epoch).
    ``betas``, ``eps``: AdamW's; ``max_warmup_share``: the longest warm-up, as a share of the run
    (:func:`warmup_length`).

    ``dataset``: a map-style data set of (image, caption), or pairs streamed from webdataset shards
    (:class:`clipdef.shards.ShardPairs`, a poisoned view of them, or a ``Subset`` of either), read in batches
    (:func:`clipdef.shards.stream_batches`) by ``num_workers`` DataLoader workers; each epoch's order comes from
    (seed, epoch), so a resumed run continues with the batches it would have had.

    Data-parallel (a ``torch.distributed`` process group of world size W > 1 is initialised, e.g. by
    ``torchrun`` through :mod:`clipdef.distributed`; every rank calls this with the same arguments):

    * ``batch_size`` is the *global* batch; each rank gets ``batch_size // W`` samples per step, a disjoint share
      of each global batch of a seeded permutation of the data set (:class:`_RankShare`), resumable like the
      single-process loader (the generator's state is in the checkpoint);
    * the loss runs inside a DistributedDataParallel wrapper; ``default_clip_loss`` (and CleanCLIP's loss)
      gather the embeddings of all ranks with gradient, so the loss is that of the global batch, and with DDP's
      averaging the parameter gradient equals that of the single-process loss on the global batch. A custom loss
      that does not gather is a per-rank loss whose gradient DDP averages over ranks;
    * BatchNorm layers (the tiny CLIP, RN50) normalise with per-rank batch statistics; at the end of each epoch
      every rank takes rank 0's buffers, so all ranks hold the same weights;
    * only rank 0 writes checkpoints and history (atomically); the others wait on a barrier. A NaN/inf loss on
      any rank stops every rank with :class:`TrainingDiverged`; ``on_epoch_end`` runs on every rank.
    """
    from clipdef.env import progress_bar

    if len(dataset) == 0:
        raise ValueError("the training set is empty: nothing to train on (check the data path or the poison "
                         "filter that produced it)")
    if epochs < 0 or lr <= 0 or batch_size < 1:
        raise ValueError(f"need epochs ≥ 0, lr > 0 and batch_size ≥ 1; got {epochs}, {lr}, {batch_size}")
    loss_fn = loss_fn or default_clip_loss
    model = bundle.model
    rank, world = rank_and_world_size()
    batch_size = min(batch_size, len(dataset))
    generator = torch.Generator().manual_seed(seed)
    stream = as_stream(dataset)  # webdataset shards (clipdef.shards): streamed in batches, never indexed
    if stream is not None:
        _check_share(batch_size, world)
        loader = _StreamedEpochs(stream, batch_size // world, seed, rank, world, num_workers)
    elif world == 1:
        loader = DataLoader(Indexed(dataset), batch_size=batch_size, shuffle=True, drop_last=True,
                            collate_fn=_collate, generator=generator, num_workers=num_workers)
    else:
        _check_share(batch_size, world)
        indexed = Indexed(dataset)
        share = _RankShare(RandomSampler(indexed, generator=generator), batch_size // world, rank, world)
        loader = DataLoader(indexed, batch_size=batch_size // world, sampler=share, drop_last=True,
                            collate_fn=_collate, generator=generator, num_workers=num_workers)
    total_steps = epochs * len(loader)
    optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps,
                                  **fused_if_supported(model))
    warmup = warmup_length(total_steps, warmup_steps, max_warmup_share)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, total_steps, warmup))
    history, start_epoch = History(), 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None:
        start_epoch = _resume(bundle, optimizer, scheduler, generator, history, ckpt)
    # one process: the loss function itself; several: DDP around it, built after resuming (it broadcasts rank 0's)
    forward = (lambda *batch: loss_fn(bundle, *batch)) if world == 1 else _data_parallel(bundle, loss_fn)
    t0 = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        model.train()
        if stream is not None:
            loader.epoch = epoch  # the epoch's shard order and shuffle: a resumed run gets the batches it had
        if hasattr(loss_fn, "start_epoch"):  # losses with per-epoch state
            loss_fn.start_epoch(epoch + 1)
        bar = progress_bar(loader, desc=f"{desc} epoch {epoch + 1}/{epochs}", enabled=progress and rank == 0,
                           leave=False)
        for images, captions, idx in bar:
            loss, logs = forward(images, captions, idx)
            bad = _non_finite(loss, rank, world)
            if bad:
                where = "" if world == 1 else f" on rank(s) {', '.join(str(r) for r, _ in bad)}"
                value = bad[0][1]
                raise TrainingDiverged(
                    f"loss became {value}{where} at epoch {epoch + 1}, step {len(history.steps)} of {desc}; "
                    f"{_last_good(ckpt, epoch)}. Lower the learning rate or check the data for broken images.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            history.steps.append({"epoch": epoch + 1, "step": len(history.steps), **logs})
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if world > 1:
            _sync_buffers(model)
        if on_epoch_end is not None:
            history.steps[-1].update(on_epoch_end(epoch + 1, bundle) or {})
        if ckpt is not None:
            if rank == 0:
                _save_state(bundle, optimizer, scheduler, generator, history, epoch + 1, ckpt)
            if world > 1:
                dist.barrier()  # no rank runs ahead of (or resumes from) a checkpoint still being written
    history.seconds += time.perf_counter() - t0
    model.eval()
    return history


def _check_share(batch_size: int, world: int) -> None:
    if batch_size < world:
        raise ValueError(f"batch_size {batch_size} is smaller than the {world} processes: every rank needs at "
                         "least one sample per step (the batch size is the global batch)")


class _StreamedEpochs:
    """The loader of a streamed pair set (:mod:`clipdef.shards`): each epoch a DataLoader over this rank's batches
    of that epoch (:func:`clipdef.shards.stream_batches`: the shards in an order drawn from (seed, epoch), a
    bounded seeded shuffle buffer, the workers each a contiguous share). Every rank has the same number of steps,
    each a disjoint ``per_rank`` share of the samples."""

    def __init__(self, stream, per_rank: int, seed: int, rank: int, world: int, num_workers: int):
        self.stream, self.per_rank, self.seed, self.rank, self.world = stream, per_rank, seed, rank, world
        self.num_workers, self.epoch = num_workers, 0

    def _batches(self):
        return self.stream.batches(self.per_rank, seed=self.seed, epoch=self.epoch, rank=self.rank,
                                   world=self.world)

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self):
        return iter(DataLoader(self._batches(), batch_size=None, num_workers=self.num_workers,
                               collate_fn=_as_is))


def _as_is(batch):
    return batch  # stream batches arrive collated: (images, captions, ids)


def _non_finite(loss: torch.Tensor, rank: int, world: int) -> list[tuple[int, float]]:
    """(rank, value) of every rank whose loss is NaN/inf — all ranks learn of it (one small all-reduce), so all
    stop together instead of leaving the others waiting in a collective."""
    if world == 1:
        return [] if torch.isfinite(loss) else [(0, float(loss))]
    values = torch.zeros(world, dtype=torch.float64, device=loss.device)
    values[rank] = loss.detach().double()
    dist.all_reduce(values)  # each slot has one non-zero contributor: NaN/inf stay in their own slot
    return [(r, float(v)) for r, v in enumerate(values.tolist()) if not math.isfinite(v)]


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


def set_threads(n: int | None = None) -> None:
    """The intra-op threads of this process: ``n`` (a profile's ``threads``), or for 0/None ``$OMP_NUM_THREADS`` if
    set, else every core. A fixed count makes a CPU run's numbers the same on any machine: the same computation
    split over another number of threads sums in another order (parallel test workers each spinning two OpenMP
    threads on two cores also slowed each other several-fold)."""
    import os

    if not n:
        limit = os.environ.get("OMP_NUM_THREADS")
        n = (int(limit) if limit and limit.isdigit() else os.cpu_count()) or 1
    torch.set_num_threads(n)


@contextlib.contextmanager
def threads_set(n: int | None):
    """Run a block with :func:`set_threads` ``(n)``, then restore the process's thread count."""
    before = torch.get_num_threads()
    set_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------------------
# The classifier loop (supervised victims, CGD's suspicious model and unlearning)
# ---------------------------------------------------------------------------------------------------------------

def train_classifier(model: torch.nn.Module, dataset: Dataset, *, epochs: int, lr: float, batch_size: int = 128,
                     weight_decay: float = 5e-4, optimizer: str = "sgd", seed: int = 0,
                     loss_fn: Callable | None = None, progress: bool = True, desc: str = "train classifier",
                     augment: Callable[[torch.Tensor], torch.Tensor] | None = None, warmup_epochs: float = 0.0,
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
    loader = DataLoader(Indexed(dataset), batch_size=min(batch_size, len(dataset)), shuffle=True,
                        collate_fn=collate_labelled, generator=generator)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, **fused_if_supported(model))
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: 'sgd', 'adam'")
    total = max(1, epochs * len(loader))
    warmup = int(warmup_epochs * len(loader))  # a linear warm-up lets from-scratch training take a larger rate
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, total, warmup))
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


def collate_labelled(batch):
    """(images, labels, indices) batches of an :class:`Indexed` labelled data set."""
    images, labels, idx = zip(*batch)
    return torch.stack(images), torch.as_tensor(labels), torch.tensor(idx)


@torch.no_grad()
def classifier_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def random_crop_flip(images: torch.Tensor, pad: int | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """BackdoorBench's training transform for small images (``get_transform(train=True)``): each image padded with
    zeros by ``pad`` pixels (None: 4 at 32 px, scaled with the side), randomly cropped back to its size, and flipped
    horizontally with probability ½ — every image its own crop and flip."""
    b, c, h, w = images.shape
    pad = max(1, round(4 * min(h, w) / 32)) if pad is None else pad
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=generator)
    rows = (dy.view(b, 1) + torch.arange(h)).view(b, 1, h, 1).expand(b, c, h, w + 2 * pad)
    cols = (dx.view(b, 1) + torch.arange(w)).view(b, 1, 1, w).expand(b, c, h, w)
    out = padded.gather(2, rows).gather(3, cols)
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip.view(b, 1, 1, 1), out.flip(-1), out)
