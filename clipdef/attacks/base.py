"""The trigger interface and its registry.

A trigger maps float images in [0, 1], shape (B, 3, H, W), to a new tensor of the same shape. Triggers work at any
image size and are deterministic given their ``seed``: per-image randomness (a random patch position, a WaNet
noise grid) is drawn from a generator seeded by ``(seed, sample_id)``, so the same sample always gets the same
trigger, whichever batch it is in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

REGISTRY: dict[str, type["Trigger"]] = {}


def register(cls):
    REGISTRY[cls.name] = cls
    return cls


def check_range(name: str, value: float, low: float, high: float, inclusive_low: bool = True) -> float:
    ok = (low <= value if inclusive_low else low < value) and value <= high
    if not ok:
        bracket = "[" if inclusive_low else "("
        raise ValueError(f"{name} must lie in {bracket}{low}, {high}], got {value}")
    return float(value)


def check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"triggers take float images of shape (B, 3, H, W) in [0, 1]; got {shape}")
    if not images.is_floating_point():
        raise TypeError("triggers take float images in [0, 1]; convert uint8 with images.float() / 255")


def sample_generator(seed: int, sample_id: int) -> torch.Generator:
    """An independent generator for one sample of one trigger."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(sample_id)) % (2 ** 63 - 1))


@dataclass
class Trigger:
    """Base class: subclasses set ``name``, ``clean_label`` and implement ``_apply``."""

    seed: int = 0
    name = "trigger"
    clean_label = False  # True: the attack keeps labels/captions and poisons only target-class samples
    params: dict = field(default_factory=dict, init=False, repr=False)

    def apply(self, images: torch.Tensor, sample_ids=None) -> torch.Tensor:
        """Triggered copies of ``images`` (the input is never modified), clamped to [0, 1]."""
        check_images(images)
        ids = list(range(len(images))) if sample_ids is None else [int(i) for i in sample_ids]
        if len(ids) != len(images):
            raise ValueError(f"{len(ids)} sample ids for {len(images)} images")
        return self._apply(images.clone(), ids).clamp_(0.0, 1.0)

    __call__ = apply

    def _apply(self, images: torch.Tensor, ids: list[int]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        """Name and parameters, for results rows and figure titles."""
        return {"attack": self.name, **{k: v for k, v in vars(self).items()
                                        if k != "params" and not isinstance(v, torch.Tensor)}}


def get(name: str, **params) -> Trigger:
    """A trigger by name, e.g. ``get("blended", alpha=0.1)``; unknown names list the valid ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown attack {name!r}; valid attacks: {', '.join(names())}")
    try:
        return REGISTRY[name](**params)
    except TypeError as err:
        valid = [f for f in REGISTRY[name].__dataclass_fields__ if f != "params"]
        raise TypeError(f"{err}; valid parameters of {name!r}: {', '.join(valid)}") from None


def names() -> list[str]:
    return sorted(REGISTRY)
