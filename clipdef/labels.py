"""The names results rows use, in one place: the chapters that write rows and the report that reads them import
these, so a label is never an f-string that two files must spell alike.

* chapters: the ``notebook`` column;
* defenses: the ``defense`` column (a detector is ``detector(method, mode)``, CGD with another guide is
  ``guided(name)``);
* metrics and their units, so that the report prints a share as a percentage and a count as a count.
"""

from __future__ import annotations

# --- chapters (the notebook column) ----------------------------------------------------------------------------
WORLD = "00_world_and_clip"
THREAT_MODEL = "01_threat_model"
ATTACKS = "02_attacks"
DETECTION = "03_detection"
FINETUNE_DEFENSES = "04_cleanclip_vs_cleanerclip"
CGD_CHAPTER = "05_cgd"
REPORT = "06_report"

# --- attacks and defenses (the attack and defense columns) -----------------------------------------------------
NO_ATTACK = "none"                              # a model fine-tuned on clean pairs alone, the control
NO_DEFENSE = "none"
DAO_FILTER_RETRAIN = "dao-filter+retrain"       # chapter 3: remove the highest-scored pairs, fine-tune again
CGD = "cgd"
CGD_SPLIT = "cgd-split"                         # the quality of CGD's split against the ground truth
CGD_TRUE_SPLIT = "cgd[true split]"              # the control: CGD's unlearning on the ground truth's split
CGD_NO_STOP = "cgd[no early stopping]"          # the unlearning run to its end (the ASR-against-steps curve)
CGD_CODE_SUSPICIOUS = "cgd[3 suspicious models × 5 epochs]"   # the official code's suspicious model
CGD_NO_AUGMENT = "cgd[no augmentation]"         # unlearning without BackdoorBench's training transform
FT_CLEAN_SPLIT = "ft-clean-split"               # fine-tuning on CGD's clean split alone
SPECTRAL_RETRAIN = "spectral+retrain"
CLEAN_ENCODER, BACKDOORED_ENCODER = "clean", "backdoored"   # chapter 4's linear probe of the encoders

DETECTOR_PREFIX = "detect:"
IMAGE, IMAGE_TEXT = "image", "image+text"       # the detector's reference: images, or images and captions


def detector(method: str, mode: str) -> str:
    """``detect:<method>:<mode>``, e.g. ``detect:dao:image+text``."""
    return f"{DETECTOR_PREFIX}{method}:{mode}"


def detector_parts(label: str) -> tuple[str, str]:
    """(method, mode) of a :func:`detector` label."""
    if not label.startswith(DETECTOR_PREFIX):
        raise ValueError(f"{label!r} is not a detector label (detect:<method>:<mode>)")
    method, _, mode = label.removeprefix(DETECTOR_PREFIX).partition(":")
    return method, mode


def ablated(defense: str, setting: str) -> str:
    """``<defense>[<setting>]``: a defense run with one setting changed (chapter 4's CleanerCLIP ablations)."""
    return f"{defense}[{setting}]"


def ablation_setting(label: str, defense: str) -> str | None:
    """The setting of an :func:`ablated` label of ``defense``; None for any other label."""
    label = str(label)
    return label[len(defense) + 1:-1] if label.startswith(f"{defense}[") and label.endswith("]") else None


# CGD with the guides of the robustness study: cgd[<guide name>]
CLEAN_GUIDE = "clean CLIP"
WEAKER_GUIDE = "weaker CLIP"
BACKDOORED_GUIDE = "backdoored CLIP"


def backdoored_guide(attack: str) -> str:
    return f"{BACKDOORED_GUIDE} ({attack})"


def guided(guide_name: str) -> str:
    """``cgd[<guide name>]``: CGD run with the guide of that name."""
    return f"{CGD}[{guide_name}]"


def is_guided_by(label: str, guide_name: str) -> bool:
    """Is ``label`` CGD with a guide whose name starts with ``guide_name`` (e.g. any backdoored guide)?"""
    return str(label).startswith(f"{CGD}[{guide_name}")


# --- metrics and their units -----------------------------------------------------------------------------------
SHARE, COUNT, SCORE, SECONDS = "share", "count", "score", "seconds"
UNITS = {
    "split_poisons_in_clean": COUNT,
    "seconds": SECONDS, "train_seconds": SECONDS,
    "steps": COUNT, "stopped_epoch": COUNT,
    "kdist_ratio": SCORE,
}


def unit(metric: str) -> str:
    """How a metric is measured: a share in [0, 1] (accuracies, ASR, AUROC — the default), a count, seconds."""
    return UNITS.get(metric, SHARE)
