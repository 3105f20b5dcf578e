"""One trigger library for CLIP and supervised victims: ``get(name, **params).apply(images)``, ``names()``.

Triggers take float images in [0, 1] of shape (B, 3, H, W) and return a new tensor of the same shape; they work at
any image size and are deterministic given ``seed``. Each exposes ``name``, ``params`` (a JSON-able dict for
results rows) and ``clean_label``. Model-dependent steps live next to them: BadCLIP's patch in :mod:`.badclip`,
the BLTO generator in :mod:`.blto`, and the clean-label adversarial step, LF's universal perturbation and
TrojanNN's patch in :mod:`.optimise`.

Families: :mod:`.patches` (badnet, clean_label, lc, badclip, trojannn), :mod:`.signals` (blended,
adaptive_blend, sig, wanet, ssba, nashville, bpp, lf), :mod:`.blto` (blto).
"""

from clipdef.attacks import blto, patches, signals  # noqa: F401  (registers the triggers)
from clipdef.attacks.base import InvalidParameterError, Trigger, UnknownAttackError, defaults, get, names

# The attacks of the supervised suite (CGD chapter) and of the CLIP chapters.
SUPERVISED = ("badnet", "blended", "sig", "wanet", "lc", "lf", "ssba", "bpp", "trojannn")
CLIP = ("badnet", "blended", "sig", "wanet", "ssba", "nashville", "badclip")

__all__ = ["Trigger", "get", "names", "defaults", "UnknownAttackError", "InvalidParameterError", "SUPERVISED",
           "CLIP"]

# The parameter that sets each trigger's visibility (for the strength explorer and ablations).
STRENGTH_PARAMS = {"blended": "alpha", "sig": "delta", "wanet": "s", "ssba": "epsilon", "nashville": "strength",
                   "lf": "epsilon", "lc": "amplitude"}
