"""CLIP models through open_clip (tiny configs registered here; pretrained tags or local files) and safe checkpoints.

A :class:`ClipBundle` carries what every chapter needs to use a CLIP model on float images in [0, 1]: the model,
its tokenizer and its input normalisation. Triggers are applied in [0, 1] pixel space *before* normalisation,
so the same attack code serves the tiny model and real ones.

Checkpoints are untrusted by definition in this book (released backdoored models are the object of study), so
they are written as safetensors and read either as safetensors or with ``torch.load(weights_only=True)``, which
refuses pickled code. Every checkpoint has a JSON sidecar with its config and SHA-256, checked on load.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_MODELS = tuple(p.stem for p in sorted(CONFIG_DIR.glob("*.json")))
TOKEN_CACHE_SIZE = 200_000  # captions remembered per model (a CC3M-scale run simply re-tokenizes)


def register_configs() -> None:
    """Make clipdef's tiny architectures known to open_clip (idempotent; called by :func:`create_clip`)."""
    import open_clip

    if not set(TINY_MODELS) <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)


@dataclass
class ClipBundle:
    """An open_clip model with its tokenizer and the normalisation its image tower expects."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    pretrained: str | None
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1], (B, 3, H, W), any size → the model's input: resized and normalised."""
        if images.dtype == torch.uint8:
            raise TypeError("images must be float tensors in [0, 1]; convert uint8 with images.float() / 255")
        images = images.to(self.device, non_blocking=True)
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bicubic",
                                   align_corners=False, antialias=True).clamp(0, 1)
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return ((images - mean) / std).contiguous(memory_format=torch.channels_last)  # as the image tower's weights

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (len(texts), context) on the model's device. Each distinct caption is tokenized once and
        remembered (training revisits the same captions every epoch; BPE in Python is a tenth of a tiny-CLIP
        step); the memory is bounded by :data:`TOKEN_CACHE_SIZE` captions."""
        texts = list(texts)
        cache = self.__dict__.setdefault("_token_cache", {})
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        if missing:
            if len(cache) + len(missing) > TOKEN_CACHE_SIZE:
                cache.clear()
            cache.update(zip(missing, self.tokenizer(missing)))
        return torch.stack([cache[t] for t in texts]).to(self.device)


def _is_local_file(pretrained: str | None) -> bool:
    return bool(pretrained) and (os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin",
                                                                              ".safetensors")))


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record):
        return "No pretrained weights loaded" not in record.getMessage()


@contextmanager
def _quiet_random_init_warning():
    """open_clip warns when a model starts from random weights; for the book's tiny CLIP that is the intent."""
    root = logging.getLogger()
    flt = _DropRandomInitWarning()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def create_clip(model: str = "clipdef-tiny", pretrained: str | None = None, device: str = "cpu",
                seed: int | None = None) -> ClipBundle:
    """Build an open_clip model: random init (``pretrained=None``), a pretrained tag, or a local weights file.

    A local file is loaded with :func:`load_state_dict_safely`; a tag goes through open_clip, which downloads
    from the model hub (impossible offline: the error then says so)."""
    import open_clip

    register_configs()
    if model not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {model!r}; clipdef's tiny ones are {list(TINY_MODELS)}, "
                         f"open_clip knows e.g. RN50, ViT-B-32, ViT-B-16 (open_clip.list_models() lists all)")
    if seed is not None:
        torch.manual_seed(seed)
    tag = None if (pretrained is None or _is_local_file(pretrained)) else pretrained
    try:
        with _quiet_random_init_warning():
            clip = open_clip.create_model(model, pretrained=tag, device="cpu")
    except Exception as err:  # the hub is unreachable offline: say what to do instead
        raise RuntimeError(f"could not get pretrained weights {model}/{pretrained}: {err}\n"
                           "Offline, download the weights elsewhere and pass the file path as pretrained=..., "
                           "or use the 'tiny' profile, which needs no download.") from err
    if _is_local_file(pretrained):
        path = Path(pretrained).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"weights file {path} does not exist; pass an existing .safetensors/.pt file "
                                    "or a pretrained tag such as 'openai'")
        state = load_state_dict_safely(path)
        state = state.get("state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        clip.load_state_dict(state, strict=True)
    # channels-last convolutions: ~10 % faster steps for the tiny CLIP on a CPU (and the usual layout on GPUs)
    clip.visual = clip.visual.to(memory_format=torch.channels_last)
    clip = clip.to(device).eval()
    pp = clip.visual.preprocess_cfg if hasattr(clip.visual, "preprocess_cfg") else {}
    size = clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return ClipBundle(model=clip, tokenizer=open_clip.get_tokenizer(model), name=model, pretrained=pretrained,
                      image_size=int(size), mean=tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                      std=tuple(pp.get("std", open_clip.OPENAI_DATASET_STD)))


# ---------------------------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------------------------

def image_batches(images, batch_size: int, num_workers: int = 0):
    """Yield (images, targets) batches from an in-memory tensor (targets None) or a map-style dataset of
    (image, target) pairs — real data sets are decoded lazily, in DataLoader workers. A set streamed from
    webdataset shards (:mod:`clipdef.shards`) yields (images, ids): its workers each stream a contiguous block,
    and the ids say where each image of the interleaved batches belongs."""
    if isinstance(images, torch.Tensor):
        for start in range(0, len(images), batch_size):
            yield images[start:start + batch_size], None
        return
    if getattr(images, "streams", False):
        loader = torch.utils.data.DataLoader(images.batches(batch_size, drop_last=False), batch_size=None,
                                             num_workers=num_workers, collate_fn=_batch_as_is)
        for batch, _, ids in loader:
            yield batch, ids
        return
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, num_workers=num_workers,
                                         collate_fn=lambda b: (torch.stack([x for x, _ in b]), [t for _, t in b]))
    yield from loader


@torch.no_grad()
def encode_images(bundle: ClipBundle, images, batch_size: int = 512, normalize: bool = True,
                  progress: bool = False, transform=None, num_workers: int = 0) -> torch.Tensor:
    """Image embeddings (N, d) on the CPU for float images in [0, 1] — a tensor (N, 3, H, W) or a dataset of
    (image, target) — L2-normalised unless ``normalize=False`` (the detection paper scores un-normalised
    embeddings). ``transform`` (e.g. a trigger) is applied to each batch in pixel space first."""
    from clipdef.env import progress_bar

    bundle.model.eval()
    out, ids = [], []
    streamed = getattr(images, "streams", False)
    total = (len(images) + batch_size - 1) // batch_size
    for batch, targets in progress_bar(image_batches(images, batch_size, num_workers), enabled=progress,
                                       total=total, desc="encode images"):
        if transform is not None:
            batch = transform(batch)
        out.append(bundle.model.encode_image(bundle.prepare_images(batch), normalize=normalize).float().cpu())
        if streamed:
            ids.append(targets)
    return _in_id_order(torch.cat(out), torch.cat(ids), len(images)) if streamed else torch.cat(out)


def _batch_as_is(batch):
    return batch  # stream batches arrive collated


def _in_id_order(embeddings: torch.Tensor, ids: torch.Tensor, n: int) -> torch.Tensor:
    """Row i = the embedding of sample i (streamed batches arrive in the order their workers finish them)."""
    if len(ids) != n or not torch.equal(torch.sort(ids).values, torch.arange(n)):
        raise RuntimeError(f"a streamed pass gave {len(ids)} embeddings for {n} samples, not one per sample")
    out = torch.empty_like(embeddings)
    out[ids] = embeddings
    return out


@torch.no_grad()
def encode_texts(bundle: ClipBundle, texts: list[str], batch_size: int = 1024, normalize: bool = True,
                 progress: bool = False) -> torch.Tensor:
    from clipdef.env import progress_bar

    bundle.model.eval()
    out = []
    for start in progress_bar(range(0, len(texts), batch_size), desc="encode texts", enabled=progress):
        tokens = bundle.tokenize(texts[start:start + batch_size])
        out.append(bundle.model.encode_text(tokens, normalize=normalize).float().cpu())
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------------------------
# Safe checkpoints
# ---------------------------------------------------------------------------------------------------------------

class UnsafeCheckpointError(RuntimeError):
    """A checkpoint that needs arbitrary code (pickled objects) to load: refused."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint that is truncated, unreadable or does not match its recorded SHA-256."""


def load_state_dict_safely(path: str | os.PathLike) -> dict:
    """Tensors from a .safetensors file or a torch file loaded with ``weights_only=True`` (no pickled code)."""
    import pickle

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CorruptCheckpointError(f"{path} is not a readable safetensors file ({err}); it may be truncated "
                                         "— delete it and let the book recreate it, or download it again") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message starts with how to load the file anyway; keep only what its unpickler refused
        detail = str(err).partition("WeightsUnpickler error:")[2]
        what = next((line.strip() for line in detail.splitlines() if line.strip()), "see the cause below")
        what = what.split(" was not an allowed global")[0]
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it contains pickled Python objects, which can run arbitrary code "
            f"({what}). Convert it to safetensors on a trusted machine, or inspect it first."
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CorruptCheckpointError(f"{path} could not be read ({err}); it may be truncated or corrupt") from err


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write the weights as safetensors atomically, with a sidecar ``<path>.json`` holding meta and SHA-256.

    A crash mid-write leaves the previous checkpoint (if any) untouched."""
    from safetensors.torch import save_file

    from clipdef.env import atomic_path, sha256_file

    path = Path(path).with_suffix(".safetensors")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
        digest = sha256_file(tmp)
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps({"sha256": digest, "meta": meta or {}}, indent=2, default=str))
    return path


def load_checkpoint(model: torch.nn.Module, path: str | os.PathLike, verify: bool = True) -> dict:
    """Load weights saved by :func:`save_checkpoint` into ``model``; check the SHA-256 first. Returns the meta."""
    from clipdef.env import sha256_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    sidecar = path.with_suffix(".json")
    meta = {}
    if sidecar.exists():
        record = json.loads(sidecar.read_text())
        meta = record.get("meta", {})
        if verify and sha256_file(path) != record["sha256"]:
            raise CorruptCheckpointError(f"{path} does not match the SHA-256 recorded in {sidecar.name}: the file "
                                         "is truncated or was changed. Delete both files to recreate them.")
    model.load_state_dict(load_state_dict_safely(path), strict=True)
    return meta


# ---------------------------------------------------------------------------------------------------------------
# Supervised victims (CGD chapter): a PreAct-ResNet18-style classifier whose width is a profile knob
# ---------------------------------------------------------------------------------------------------------------

class PreActBlock(torch.nn.Module):
    """Pre-activation basic block (He et al. 2016): BN-ReLU-conv twice, identity or 1×1 projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1, self.bn2 = torch.nn.BatchNorm2d(c_in), torch.nn.BatchNorm2d(c_out)
        self.conv1 = torch.nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv2 = torch.nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        # The projection is a 1×1 convolution of every stride-th pixel: the same map as a strided 1×1 convolution,
        # whose channels-last backward on a CPU corrupts the heap for some narrow shapes and odd batch sizes
        # (torch 2.14, e.g. 8→16 channels, 16×16 pixels, batch 17).
        self.stride = stride
        self.shortcut = None if stride == 1 and c_in == c_out else torch.nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out[..., ::self.stride, ::self.stride])
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet(torch.nn.Module):
    """PreAct-ResNet18 (blocks 2-2-2-2) for small images; ``width`` 64 is the BackdoorBench model."""

    def __init__(self, num_classes: int, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2)):
        super().__init__()
        if num_classes < 2 or width < 1:
            raise ValueError(f"need num_classes ≥ 2 and width ≥ 1, got {num_classes}, {width}")
        self.stem = torch.nn.Conv2d(3, width, 3, 1, 1, bias=False)
        layers, c_in = [], width
        for stage, n in enumerate(blocks):
            c_out = width * 2 ** stage
            for i in range(n):
                layers.append(PreActBlock(c_in, c_out, 2 if (i == 0 and stage > 0) else 1))
                c_in = c_out
        self.layers = torch.nn.Sequential(*layers)
        self.bn = torch.nn.BatchNorm2d(c_in)
        self.head = torch.nn.Linear(c_in, num_classes)
        # Inputs are float images in [0, 1]; normalising inside keeps every trigger in pixel space.
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.to(memory_format=torch.channels_last)  # a quarter faster on a CPU core for these narrow layers

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        x = self.layers(self.stem(x))
        return F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
