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

# The attacks of the CLIP chapters (2–4) and of the supervised suite (chapter 5).
CLIP = ("badnet", "blended", "sig", "wanet", "ssba", "nashville", "badclip")
SUPERVISED = ("badnet", "blended", "sig", "wanet", "lc", "lf", "ssba", "bpp", "trojannn")

# The book's parameters for the attacks, where they differ from each trigger's defaults (the papers', for 224 px
# images). On the tiny world's 32 px images WaNet's warp (s = 0.5 → a quarter pixel) and SSBA's ε = 8/255 residual
# are too faint for a tiny model to pick up in a short fine-tuning, so the book strengthens them (and says so).
CLIP_PARAMS: dict[str, dict] = {
    "wanet": {"s": 2.0},
    "ssba": {"epsilon": 16 / 255},
}

# Supervised attacks whose trigger is optimised against a clean classifier (the attacker's surrogate), and the
# share of the target class that the clean-label attacks poison (BackdoorBench's pratio for them).
OPTIMISED_SUPERVISED = ("lf", "trojannn")
CLEAN_LABEL_RATES = {"clean_label": 0.5, "lc": 0.5}

__all__ = ["Trigger", "get", "names", "defaults", "UnknownAttackError", "InvalidParameterError", "SUPERVISED",
           "CLIP", "CLIP_PARAMS", "OPTIMISED_SUPERVISED", "CLEAN_LABEL_RATES", "STRENGTH_PARAMS"]

# The parameter that sets each trigger's visibility (for the strength explorer and ablations).
STRENGTH_PARAMS = {"blended": "alpha", "sig": "delta", "wanet": "s", "ssba": "epsilon", "nashville": "strength",
                   "lf": "epsilon", "lc": "amplitude"}
