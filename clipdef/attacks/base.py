"""The trigger interface and its registry.

A trigger maps float images in [0, 1], shape (B, 3, H, W), to a new tensor of the same shape, dtype and device,
clamped to [0, 1]; the input is never modified. Triggers work at any image size and are deterministic given their
``seed``. Randomness never touches the global RNG:

* a fixed pattern (a blend pattern, a warp field) comes from a generator seeded by ``(seed, pattern name)``;
* per-image randomness (a random patch position, fresh noise) comes from a generator seeded by
  ``(seed, sample_id)``, so the same sample always gets the same trigger, whichever batch it is in. The poisoning
  views pass dataset indices as ``sample_ids``; by default they are the positions in the batch.

Each trigger is a dataclass: its fields are its parameters (``trigger.params`` is a JSON-able dict for results
rows), checked when it is built — a bad value raises ``ValueError`` naming the valid range.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from clipdef.env import content_digest

REGISTRY: dict[str, type["Trigger"]] = {}


class UnknownAttackError(ValueError, KeyError):
    """An attack name that is not registered (a ValueError and a KeyError, so either ``except`` catches it)."""

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return str(self.args[0])


class InvalidParameterError(TypeError, ValueError):
    """A parameter name the trigger does not have."""


def register(cls):
    REGISTRY[cls.name] = cls
    return cls


# ---------------------------------------------------------------------------------------------------------------
# Parameter checks: each raises ValueError naming the parameter and its valid range
# ---------------------------------------------------------------------------------------------------------------

def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_range(name: str, value: float, low: float, high: float, inclusive_low: bool = True) -> float:
    ok = _is_number(value) and math.isfinite(value) and (low <= value if inclusive_low else low < value) \
        and value <= high
    if not ok:
        bracket = "[" if inclusive_low else "("
        raise ValueError(f"{name} must lie in {bracket}{low}, {high}], got {value!r}")
    return float(value)


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low and \
        (high is None or value <= high)
    if not ok:
        bound = f"≥ {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_image_tensor(name: str, value, channels=(1, 3), low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """A user-supplied pattern or patch: a float tensor (C, h, w) with C in ``channels``, values in [low, high].
    Returned detached, float32, on the CPU, with 3 channels."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.ndim != 3 \
            or value.shape[0] not in channels:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a float tensor of shape (C, h, w) with C in {channels}, got {shape}")
    if value.numel() and (value.min() < low - 1e-6 or value.max() > high + 1e-6):
        raise ValueError(f"{name} values must lie in [{low}, {high}], got [{value.min():.3g}, {value.max():.3g}]")
    return value.detach().float().cpu().expand(3, *value.shape[1:]).clone()


def check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"triggers take float images of shape (B, 3, H, W) in [0, 1]; got {shape}")
    if not images.is_floating_point():
        raise TypeError("triggers take float images in [0, 1]; convert uint8 with images.float() / 255")


# ---------------------------------------------------------------------------------------------------------------
# Seeded randomness that never touches the global RNG
# ---------------------------------------------------------------------------------------------------------------

def _entropy(part) -> int:
    return zlib.crc32(part.encode()) if isinstance(part, str) else int(part) & 0xFFFFFFFFFFFFFFFF


def seeded_generator(seed: int, *stream) -> torch.Generator:
    """A CPU generator determined by ``seed`` and a stream (a pattern name, a sample id, or both). NumPy's
    SeedSequence mixes them, so distinct (seed, stream) pairs give independent draws."""
    words = np.random.SeedSequence([_entropy(seed), *(_entropy(p) for p in stream)]).generate_state(2)
    return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))


def sample_generator(seed: int, sample_id: int) -> torch.Generator:
    """An independent generator for one sample of one trigger."""
    return seeded_generator(seed, "sample", sample_id)


# ---------------------------------------------------------------------------------------------------------------
# The base class
# ---------------------------------------------------------------------------------------------------------------

def _describe(value):
    """A JSON-able description of a parameter value (tensors and networks by shape and content hash)."""
    if isinstance(value, torch.Tensor):
        return f"tensor{list(value.shape)}:sha256={content_digest(value, length=10)}"
    if isinstance(value, torch.nn.Module):
        return f"{type(value).__name__}:sha256={content_digest(*value.state_dict().values(), length=10)}"
    if isinstance(value, float):
        return round(value, 6)
    return value


@dataclass(eq=False)
class Trigger:
    """Base class: subclasses set ``name``, declare their parameters as fields, check them in ``__post_init__``
    (calling ``super().__post_init__()``) and implement ``_apply`` on a private float32 copy of the images."""

    name = "trigger"
    seed: int = 0
    # True: the attack keeps labels/captions and poisons only target-class samples (the poisoning views read it).
    # A field, so any trigger can be run clean-label: e.g. the detection paper's clean-label BadNets, or SIG as
    # BackdoorBench runs it.
    clean_label: bool = False

    def __post_init__(self):
        check_int("seed", self.seed, 0)
        if not isinstance(self.clean_label, bool):
            raise ValueError(f"clean_label must be True or False, got {self.clean_label!r}")

    def apply(self, images: torch.Tensor, sample_ids=None) -> torch.Tensor:
        """Triggered copies of ``images`` (the input is never modified), same dtype and device, clamped to [0, 1].
        ``sample_ids`` (one int per image) key the per-image randomness; default: 0 … B−1."""
        check_images(images)
        ids = list(range(len(images))) if sample_ids is None else [int(i) for i in sample_ids]
        if len(ids) != len(images):
            raise ValueError(f"{len(ids)} sample ids for {len(images)} images")
        with torch.no_grad():
            work = images.detach().to(torch.float32, copy=True)
            out = self._apply(work, ids).clamp_(0.0, 1.0)
        return out.to(images.dtype)

    __call__ = apply

    def _apply(self, images: torch.Tensor, ids: list[int]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def params(self) -> dict:
        """The parameters as a JSON-able dict, for results rows (tensors described by shape and hash)."""
        return {f.name: _describe(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def describe(self) -> dict:
        """Name and parameters, for results rows and figure titles."""
        return {"attack": self.name, **self.params}

    def replace(self, **changes) -> "Trigger":
        """A copy with some parameters changed (and checked again)."""
        return dataclasses.replace(self, **changes)

    def for_test(self) -> "Trigger":
        """The trigger as the attacker applies it at test time. Most triggers are the same at training and test;
        some are not (the detection paper's BadNets pastes its patch at a random position in training and at the
        centre at test; Adaptive-Blend blends the whole pattern at test)."""
        return self


def get(name: str, **params) -> Trigger:
    """A trigger by name, e.g. ``get("blended", alpha=0.1)``; unknown names list the valid ones."""
    if name not in REGISTRY:
        raise UnknownAttackError(f"unknown attack {name!r}; valid attacks: {', '.join(names())}")
    cls = REGISTRY[name]
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise InvalidParameterError(f"unknown parameter(s) {', '.join(unknown)}; "
                                    f"valid parameters of {name!r}: {', '.join(valid)}")
    return cls(**params)


def names() -> list[str]:
    return sorted(REGISTRY)


def defaults(name: str) -> dict:
    """The default parameters of a registered trigger."""
    return get(name).params
