"""One trigger library for CLIP and supervised victims: ``get(name, **params).apply(images)``, ``names()``.

Triggers take float images in [0, 1] of shape (B, 3, H, W) and return a new tensor of the same shape; they work at
any image size and are deterministic given ``seed``. Each exposes ``name``, ``params`` (a JSON-able dict for
results rows) and ``clean_label``. Model-dependent steps live next to them: BadCLIP's patch (and its recipe,
``BadCLIPSettings``) in :mod:`.badclip`, the BLTO generator in :mod:`.blto`, Input-Aware's generators and their
joint training with the victim in :mod:`.inputaware`, and the clean-label adversarial step, LF's universal
perturbation and TrojanNN's trigger in :mod:`.optimise`.

Families: :mod:`.patches` (badnet, clean_label, lc, badclip, trojannn), :mod:`.signals` (blended,
adaptive_blend, sig, wanet, ssba, nashville, bpp, lf), :mod:`.blto` (blto), :mod:`.inputaware` (inputaware).
"""

from clipdef.attacks import blto, inputaware, patches, signals  # noqa: F401  (registers the triggers)
from clipdef.attacks.base import InvalidParameterError, Trigger, UnknownAttackError, defaults, get, names

# The attacks of the CLIP chapters (2–4) and of the supervised suite (chapter 5). Input-Aware implants on the tiny
# world: its victim, trained with its generators (15 epochs, mask network 4, generators of width 8), reaches CA 84 %
# and ASR 59 % (the clean surrogate gives its trigger 0.5 %).
CLIP = ("badnet", "blended", "sig", "wanet", "ssba", "nashville", "badclip")
SUPERVISED = ("badnet", "blended", "sig", "wanet", "lc", "lf", "ssba", "bpp", "trojannn", "inputaware")

# The book's parameters for each attack where they differ from the trigger's defaults, with their source and, where
# the tiny world needs another value than the papers' 224 px photographs, the measurement that chose it (chapter 2
# shows each: the tiny CLIP, 82 % zero-shot, fine-tuned 10 epochs at lr 1e-3 on 4,000 pairs, 3 % poisoned).
CLIP_PARAMS: dict[str, dict] = {
    # The detection paper pastes its lattice at a new random position per poisoned image and at the centre at test
    # (cc3m_badnets.py, in1k_backdoor_zeroshot.py): on 32 px images that patch is 3 px and the tiny CLIP does not
    # learn it wherever it is (ASR@1 1 %, and 15 % at 8 px); at a fixed corner, BackdoorBench's place, it does (80 %).
    "badnet": {"location": "corner"},
    # CleanCLIP's and BadCLIP's 'blended' (backdoor/utils.py): fresh U(0, 1) noise for every image, α = 0.2
    "blended": {"per_image_noise": True},
    # BadCLIP's 'warped': a grid of the image side (k = 224 at 224 px) and s = 1, which moves a pixel by half a pixel
    # whatever the side. At 32 px: s = 1 → ASR@1 11 %, s = 2 → 30 %, s = 4 → 70 %.
    "wanet": {"k": None, "s": 4.0},
    # an SSBA-style residual (StegaStamp's reach PSNR ≈ 27 dB, about 11/255 rms): ε = 16/255 → 28 %, 32/255 → 92 %
    "ssba": {"epsilon": 32 / 255},
    # BadCLIP: its optimisation's recipe is the profile's (Profile.badclip; the tiny one: profiles.TINY_BADCLIP)
}

# The papers' own settings where the book's differ (CLIP_PARAMS and profiles.TINY_BADCLIP say why): chapter 2
# poisons the tiny CLIP with both, so the reader sees what each choice does.
PAPER_PARAMS: dict[str, dict] = {
    "badnet": {"location": "random", "test_location": "center"},
    "wanet": {"k": None, "s": 1.0},
    "ssba": {"epsilon": 8 / 255},
    "badclip": {"patch_size": 3},   # 16 px at 224, scaled to 32 px
}

# The supervised suite follows BackdoorBench's configs (config/attack/*/default.yaml), which CGD runs.
SUPERVISED_PARAMS: dict[str, dict] = {
    "badnet": {"pattern": "white", "location": "corner"},   # a 3×3 white square in the bottom-right corner
    "sig": {"clean_label": True, "delta": 40 / 255},         # clean-label, δ = 40 (of 255), f = 6
}

# Supervised attacks whose trigger is optimised against a clean classifier (the attacker's surrogate), and the
# share of the target class that the clean-label attacks poison. BackdoorBench's pratio 0.1 counts poisons among
# all samples: on CIFAR-10 that is the whole target class, and the world's target class (5 %) is poisoned whole.
OPTIMISED_SUPERVISED = ("lf", "trojannn")
HARDENED_CLEAN_LABEL = ("clean_label", "lc")   # their poisons are made hard first (Turner et al.), SIG's are not
CLEAN_LABEL_RATES = {"clean_label": 1.0, "lc": 1.0, "sig": 1.0}
# Supervised attacks whose trigger networks are trained together with the victim (Input-Aware: its generators).
JOINTLY_TRAINED = ("inputaware",)

__all__ = ["Trigger", "get", "names", "defaults", "UnknownAttackError", "InvalidParameterError", "SUPERVISED",
           "CLIP", "CLIP_PARAMS", "PAPER_PARAMS", "SUPERVISED_PARAMS", "OPTIMISED_SUPERVISED", "JOINTLY_TRAINED",
           "HARDENED_CLEAN_LABEL", "CLEAN_LABEL_RATES", "STRENGTH_PARAMS"]

# The parameter that sets each trigger's visibility (for the strength explorer and ablations).
STRENGTH_PARAMS = {"blended": "alpha", "sig": "delta", "wanet": "s", "ssba": "epsilon", "nashville": "strength",
                   "lf": "epsilon", "lc": "amplitude"}
