"""One trigger library for CLIP and supervised victims: ``get(name, **params).apply(images)``, ``names()``.

Triggers take float images in [0, 1] of shape (B, 3, H, W) and return a new tensor of the same shape; they work at
any image size and are deterministic given ``seed``. Model-dependent steps (BadCLIP's patch, the clean-label
adversarial step, LF's universal perturbation, TrojanNN's patch) live in :mod:`.badclip` and :mod:`.optimise`.
"""

from clipdef.attacks import patches, signals  # noqa: F401  (registers the triggers)
from clipdef.attacks.base import Trigger, get, names

# The attacks of the supervised suite (CGD chapter) and of the CLIP chapters.
SUPERVISED = ("badnet", "blended", "sig", "wanet", "lc", "lf", "ssba", "bpp", "trojannn")
CLIP = ("badnet", "blended", "sig", "wanet", "ssba", "nashville", "badclip")

__all__ = ["Trigger", "get", "names", "SUPERVISED", "CLIP"]
