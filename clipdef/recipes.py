"""The book's recipes beside the sources': every setting of every stage, ours read from the profile or the code, the
source's value and where the source sets it, and — for every difference — why, and what it is expected to change.

This module is the one home of the sources' values and citations (the settings dataclasses' defaults are tested
equal to them) and of the reasons for each deviation. The recipes page (``notebooks/07_recipes.ipynb``) computes its
tables here at build time, and ``tests/test_recipes.py`` fails when a profile's value leaves its source without a
reason, or a reason outlives its value:

* :data:`RECIPES` — one :class:`Recipe` per (stage, setting): the source's value, its citation, and how ours is
  read from a profile (a field, a settings field such as ``cgd.sigma1``, or a constant of the code);
* :data:`DEVIATIONS` — per profile (and :data:`BOOK` for what the code does on every profile), the settings that
  differ from the source, each with its reason (``"scaled: ..."`` on the tiny profile), its expected effect and the
  value it was written for;
* :func:`table`, :func:`deviations`, :func:`summary` — the page's tables (pandas); :func:`problems` — what is
  unexplained or stale, empty when the page is honest.

Sources (files at the commits listed in the book's reference notes): CleanCLIP (Bansal et al., ICCV 2023;
nishadsinghi/CleanCLIP), BadCLIP (Liang et al., CVPR 2024; LiangSiyuan21/BadCLIP), CleanerCLIP (Xun et al., arXiv
2409.17601; no public code), the detection paper (Huang et al., ICLR 2025; HanxunH/Detect-CLIP-Backdoor-Samples),
CGD (Xu et al., ACM MM 2025; binyxu/CGD) and BackdoorBench (SCLBD/BackdoorBench).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

from clipdef import profiles
from clipdef.profiles import Profile

BOOK = "all profiles"   # the key of deviations the code makes on every profile
BOOK_PROFILES = ("tiny", "colab", "paper")   # the profiles the page compares (smoke is for the tests only)


class _Unstated:
    """The source does not state the value (an open item of the sources)."""

    def __repr__(self) -> str:
        return "not stated"


UNSTATED = _Unstated()
_UNPINNED = object()


# ---------------------------------------------------------------------------------------------------------------
# Showing and comparing values
# ---------------------------------------------------------------------------------------------------------------

def show(value) -> str:
    """A value as the page prints it: 1e-6, 0.003, 500,000, (0.9, 0.98), yes/no, "—" for None."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e6:
            return f"{int(value):,}" if abs(value) >= 1e3 else f"{value:g}"
        if abs(value) >= 1e-3:
            return f"{value:.4g}"
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    if isinstance(value, tuple):
        return "(" + ", ".join(show(v) for v in value) + ")"
    return str(value)


def over_255(value) -> str:
    """An amplitude on the 0–255 scale the papers use (60/255), else as :func:`show`."""
    if isinstance(value, float) and abs(value * 255 - round(value * 255)) < 1e-6:
        return f"{round(value * 255)}/255"
    return show(value)


def share(value) -> str:
    return f"{100 * value:.3g} %" if isinstance(value, (int, float)) else show(value)


def same(a, b) -> bool:
    """Equal values (floats to 1e-9, relatively; tuples element by element)."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


# ---------------------------------------------------------------------------------------------------------------
# Stages, recipes, deviations
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    key: str
    title: str
    follows: str                                        # the sources the stage's values come from
    applies: Callable[[Profile], bool] = lambda cfg: True
    instead: Callable[[Profile], str] = lambda cfg: "—"  # what a profile does when the stage does not apply


@dataclass(frozen=True)
class Recipe:
    """One setting of one stage: the source's value and citation, and how the book's value is read."""

    stage: str
    setting: str
    source: object
    cite: str
    ours: Callable[[Profile], object]
    fields: tuple[str, ...] = ()              # profile fields (``cgd.sigma1``: a settings field) it is read from
    scaled: Callable[[Profile], object] | None = None   # the source's value scaled to the profile's image side
    fmt: Callable[[object], str] = show
    matches: Callable[[object, object, Profile], bool] | None = None   # when "same" is not equality

    def source_for(self, cfg: Profile):
        return self.scaled(cfg) if self.scaled is not None else self.source

    def agrees(self, cfg: Profile) -> bool | None:
        """Whether the profile runs the source's value; None when the source does not state it."""
        if self.source is UNSTATED:
            return None
        ours, source = self.ours(cfg), self.source_for(cfg)
        return self.matches(ours, source, cfg) if self.matches else same(ours, source)


@dataclass(frozen=True)
class Deviation:
    """Why a profile (or the code, on every profile) departs from the source, and what that is expected to do.

    ``value``: the value the reason was written for; the check fails when the profile's value moves away from it,
    so a reason cannot outlive its value (pinned on colab, paper and for the code's own deviations)."""

    reason: str
    effect: str = ""
    value: object = _UNPINNED

    @property
    def pinned(self) -> bool:
        return self.value is not _UNPINNED


def _field(name: str) -> Callable[[Profile], object]:
    """A profile field, or a settings field written ``cgd.sigma1``."""
    head, _, tail = name.partition(".")
    return (lambda cfg: getattr(getattr(cfg, head), tail)) if tail else (lambda cfg: getattr(cfg, head))


def _r(stage, setting, source, cite, ours=None, fields=(), **kw) -> Recipe:
    """A recipe; ``ours`` defaults to the profile field named by the single entry of ``fields``."""
    if isinstance(fields, str):
        fields = (fields,)
    if ours is None:
        ours = _field(fields[0])
    return Recipe(stage, setting, source, cite, ours, tuple(fields), **kw)


def _default(function, parameter: str):
    """A keyword default of a function of the code (the value a stage runs with when it passes none)."""
    return inspect.signature(function).parameters[parameter].default


def _train():
    from clipdef import train

    return train


def _warmup(n_pairs: str, epochs: str, batch: str, warmup: str) -> Callable[[Profile], int]:
    """The warm-up steps a contrastive run gets (clipdef.train.warmup_length over its steps: drop_last batches)."""
    def effective(cfg) -> int:
        n, b = getattr(cfg, n_pairs), getattr(cfg, batch)
        total = getattr(cfg, epochs) * (n // min(b, n))
        return _train().warmup_length(total, getattr(cfg, warmup))
    return effective


def _warmup_share(cfg) -> float:
    total = cfg.pretrain_epochs * (cfg.n_pretrain // min(cfg.batch_size, cfg.n_pretrain))
    return _train().warmup_length(total, cfg.warmup_steps) / max(1, total)


def _weights(cfg) -> str:
    return f"{cfg.model} / {cfg.pretrained or 'pre-trained by the book'}"


def _clip_trigger(name: str, cfg=None):
    """The trigger of a CLIP attack with the book's parameters, as clipdef.stages.clip.make_trigger makes it
    (BadCLIP's parameters are its optimiser's: its trigger gets the optimised patch alone)."""
    from clipdef import attacks

    params = {} if name == "badclip" else attacks.CLIP_PARAMS.get(name, {})
    return attacks.get(name, seed=cfg.seed if cfg else 0, **params)


def _trigger_attr(name: str, attribute: str) -> Callable[[Profile], object]:
    return lambda cfg: getattr(_clip_trigger(name), attribute)


def _badclip_side(cfg) -> int:
    from clipdef.attacks.patches import patch_side

    return patch_side(cfg.image_size, cfg.badclip.patch_size)


def _badnet_side(cfg) -> int:
    from clipdef.attacks.patches import patch_side

    return patch_side(cfg.image_size, _clip_trigger("badnet").patch_size)


def _papers_patch(cfg) -> float:
    """16 px at 224 (BadCLIP's and the detection paper's patch) at the profile's image side, rounded."""
    return round(16 * cfg.image_size / 224)


def _templates(cfg) -> int:
    from clipdef import evaluate

    return len(evaluate.templates(cfg.templates))


def _poison_templates(cfg) -> int:
    from clipdef import poison

    return len(poison.TARGET_TEMPLATES)


def _supervised_trigger(name: str):
    from clipdef import attacks

    return attacks.get(name, **attacks.SUPERVISED_PARAMS.get(name, {}))


def _supervised_badnet(cfg) -> tuple:
    from clipdef.attacks.patches import patch_side

    trigger = _supervised_trigger("badnet")
    side = 32 if cfg.cifar10_folder else cfg.image_size
    return patch_side(side, trigger.patch_size), trigger.pattern, trigger.location


def _detect_k(cfg) -> int:
    from clipdef import detect

    return _default(detect.score, "k")   # chapter 3's parameter k (tests/test_recipes.py: the same)


def _detect_lid_k(cfg) -> int:
    from clipdef import detect

    return detect.LID_K   # chapter 3's detector_k("lid")


def _detect_batch(cfg) -> int:
    from clipdef import detect

    return _default(detect.batched, "batch_size")   # chapter 3's parameter scoring_batch (tests: the same)


def _detect_form(cfg) -> str:
    from clipdef import detect

    return _default(detect.score, "form")


def _files_are_the_source(ours, source, cfg) -> bool:
    return cfg.data == "files"


def _badclip_images(cfg) -> int:
    from clipdef.stages.clip import BADCLIP_IMAGES

    return BADCLIP_IMAGES


def _augmentation(cfg) -> str:
    b = cfg.badclip
    used = [f"{name} (p {show(p)})" for name, p in (("EDA", b.eda_prob), ("AutoAugment", b.aug_prob)) if p > 0]
    return ", ".join(used) or "none"


_CC_PARSER = "CleanCLIP src/parser.py (defaults; the fine-tuning commands do not set it)"
_CC_README = "CleanCLIP README (CleanCLIP fine-tuning command)"
_BADCLIP_SH = "BadCLIP backdoor_attack.sh (its BadCLIP runs)"
_BADCLIP_OPT = "BadCLIP README (patch optimisation command)"
_DETECT_CFG = "Detect-CLIP-Backdoor-Samples configs/clip_backdoor/cc3m/*/rn50_bs1024_e32/pretrain.yaml"
_DETECT = "Detect-CLIP-Backdoor-Samples extract_bd_scores.py"
_CGD_YAML = "CGD 4backdoorbench/cgd/cifar10.yaml"
_CGD_PY = "CGD 4backdoorbench/cgd.py"
_CGD_MODELS = "CGD utils/models.py (initialize_kfold_classifier, CLIPClassifier)"
_BB = "BackdoorBench config/attack/prototype/cifar10.yaml"
_BB_OPT = "BackdoorBench utils/aggregate_block/train_settings_generate.py (argparser_opt_scheduler)"
_CLEANERCLIP = "CleanerCLIP (Xun et al.), Sec. 4 and Table 1"

STAGES: dict[str, Stage] = {s.key: s for s in (
    Stage("pretrain", "CLIP pre-training", "the detection paper's CC3M pre-training (the one seed paper that trains "
          "CLIP from scratch)", applies=lambda cfg: cfg.pretrained is None,
          instead=lambda cfg: f"starts from the weights {_weights(cfg)}"),
    Stage("optimizer", "AdamW and data-parallel training (every contrastive stage)", "CleanCLIP's training code, "
          "which BadCLIP's scripts run"),
    Stage("poison", "Poisoned fine-tuning", "BadCLIP's scripts (backdoor_attack.sh: --batch_size=128 --lr=1e-6 "
          "--epochs=10 --num_warmup_steps=10000 --pretrained), the protocol of CleanCLIP's Sec. 5.2 (its issue #10) "
          "and of CleanerCLIP's Table 1"),
    Stage("evaluation", "Zero-shot evaluation", "BadCLIP's ImageNet-1K evaluation (CleanerCLIP's Table 1)"),
    Stage("badclip", "BadCLIP's patch optimisation", "BadCLIP's README command (--patch_size=16 "
          "--patch_location=middle --batch_size=64 --epochs=50 --eda_prob=0.1 --aug_prob=0.5) and "
          "src/embeding_optimize_patch.py"),
    Stage("defense", "Fine-tuning defenses (FT, CleanCLIP, CleanerCLIP)", "CleanCLIP's README command (--batch_size 64 "
          "--epochs 10 --num_warmup_steps 50 --lr 1e-5 --inmodal) and its paper's clean set"),
    Stage("cleanerclip", "CleanerCLIP's sub-captions", "CleanerCLIP's paper (no public code)"),
    Stage("triggers", "The CLIP triggers", "BadCLIP's backdoor/utils.py and the detection paper's datasets/"),
    Stage("victims", "Supervised victims", "BackdoorBench's prototype (the victims CGD defends)"),
    Stage("cgd", "CGD", "CGD's official code"),
    Stage("detection", "Detection", "the detection paper's code"),
)}

RECIPES: tuple[Recipe, ...] = (
    # --- CLIP pre-training (tiny only) ------------------------------------------------------------------------
    _r("pretrain", "architecture", "RN50", _DETECT_CFG, fields="model"),
    _r("pretrain", "image side (px)", 224, _DETECT_CFG, fields="image_size"),
    _r("pretrain", "pre-training pairs", 2_300_000, "Detect-CLIP-Backdoor-Samples README (the CC3M pairs that could "
       "still be downloaded)", fields="n_pretrain"),
    _r("pretrain", "epochs", 32, _DETECT_CFG, fields="pretrain_epochs"),
    _r("pretrain", "global batch", 1024, _DETECT_CFG + " (256 on each of 4 GPUs)", fields="batch_size"),
    _r("pretrain", "learning rate", 1e-3, _DETECT_CFG, fields="pretrain_lr"),
    _r("pretrain", "warm-up (share of the run)", 4.25 / 32, _DETECT_CFG + " (4.25 of 32 epochs)", _warmup_share,
       ("warmup_steps", "n_pretrain", "pretrain_epochs", "batch_size"), fmt=share),
    _r("pretrain", "weight decay", 0.2, _DETECT_CFG, fields="weight_decay"),
    # --- AdamW and data parallelism ---------------------------------------------------------------------------
    _r("optimizer", "AdamW betas", (0.9, 0.999), "CleanCLIP src/parser.py (--beta1, --beta2), src/main.py",
       lambda cfg: _train().ADAMW_BETAS),
    _r("optimizer", "AdamW eps", 1e-8, "CleanCLIP src/parser.py (--eps), src/main.py", lambda cfg: _train().ADAMW_EPS),
    _r("optimizer", "no weight decay on", "parameters named bn, ln, bias or logit_scale", "CleanCLIP src/main.py",
       lambda cfg: "parameters of fewer than two dimensions, positional embeddings, logit scale"),
    _r("optimizer", "schedule", "linear warm-up, then cosine to 0", "CleanCLIP src/scheduler.py (cosine_scheduler)",
       lambda cfg: "linear warm-up, then cosine to 0"),
    _r("optimizer", "longest warm-up (share of the run)", 1.0, "CleanCLIP src/scheduler.py (warms up for "
       "--num_warmup_steps whatever the run's length)", lambda cfg: _train().MAX_WARMUP_SHARE, fmt=share),
    _r("optimizer", "logit scale clamp", math.log(100), "CleanCLIP src/train.py (clamp to 4.6052)",
       lambda cfg: _train().MAX_LOGIT_SCALE, fmt=lambda v: "ln 100" if same(v, math.log(100)) else show(v)),
    _r("optimizer", "precision", "mixed (autocast and GradScaler)", "CleanCLIP src/train.py, src/main.py",
       lambda cfg: "float32"),
    _r("optimizer", "embeddings gathered over GPUs", "without gradient; each process's own rows put back",
       "CleanCLIP src/train.py (get_loss: dist.all_gather)",
       lambda cfg: "with gradient (clipdef.losses.gather_with_grad)"),
    # --- poisoned fine-tuning ---------------------------------------------------------------------------------
    _r("poison", "model / weights", "RN50 / openai", _BADCLIP_SH + " (--pretrained: OpenAI's RN50)", _weights,
       ("model", "pretrained")),
    _r("poison", "image side (px)", 224, _BADCLIP_SH, fields="image_size"),
    _r("poison", "fine-tuning data", "CC3M", _BADCLIP_SH + " (GCC_Training500K)",
       lambda cfg: "CC3M" if cfg.data == "files" else "the embedded world", ("data",)),
    _r("poison", "fine-tuning pairs", 500_000, _BADCLIP_SH, fields="n_finetune"),
    _r("poison", "poisoned share", 0.003, _BADCLIP_SH + " (1,500 of 500,000)", fields="poison_rate", fmt=share),
    _r("poison", "poisoned pairs", 1500, _BADCLIP_SH, lambda cfg: round(cfg.n_finetune * cfg.poison_rate),
       ("n_finetune", "poison_rate")),
    _r("poison", "target", "banana", "BadCLIP backdoor/create_backdoor_data.py (--label banana)", fields="target"),
    _r("poison", "poisoned-caption templates", 80, "BadCLIP backdoor/create_backdoor_data.py; the detection paper's "
       "datasets/cc3m*.py (one of the 80 ImageNet templates per pair)", _poison_templates,
       fmt=lambda v: f"{v} templates"),
    _r("poison", "epochs", 10, _BADCLIP_SH, fields="finetune_epochs"),
    _r("poison", "batch", 128, _BADCLIP_SH, fields="batch_size"),
    _r("poison", "learning rate", 1e-6, _BADCLIP_SH, fields="finetune_lr"),
    _r("poison", "warm-up steps (run)", 10_000, _BADCLIP_SH,
       _warmup("n_finetune", "finetune_epochs", "batch_size", "warmup_steps"),
       ("warmup_steps", "n_finetune", "finetune_epochs", "batch_size")),
    _r("poison", "weight decay", 0.1, _CC_PARSER, fields="weight_decay"),
    # --- zero-shot evaluation ---------------------------------------------------------------------------------
    _r("evaluation", "zero-shot set", "ImageNet-1K validation", "BadCLIP src/evaluate.py; CleanerCLIP Table 1",
       lambda cfg: "ImageNet-1K validation" if cfg.data == "files" else "the world's eval split",
       ("data",)),
    _r("evaluation", "zero-shot images", "every image (50,000)", "ImageNet-1K validation",
       lambda cfg: "every image of eval_folder" if cfg.data == "files" else cfg.n_eval, ("n_eval",),
       matches=_files_are_the_source),
    _r("evaluation", "class prompts", 80, "data/ImageNet1K/validation/classes.py (the 80 OpenAI templates)",
       _templates, ("templates",), fmt=lambda v: f"{v} templates"),
    _r("evaluation", "ASR images", "all, the target class's own included", "BadCLIP src/data.py (--add_backdoor "
       "relabels every image)", lambda cfg: "the non-target images (clipdef.poison.triggered_eval)"),
    # --- BadCLIP's patch --------------------------------------------------------------------------------------
    _r("badclip", "patch side (px)", 16, _BADCLIP_OPT + " (16 px at 224; scaled to the image side)", _badclip_side,
       ("badclip.patch_size", "image_size"), scaled=_papers_patch),
    _r("badclip", "patch position", "center", _BADCLIP_OPT + " (middle)", fields="badclip.location"),
    _r("badclip", "optimisation images", 10_000, "BadCLIP data/GCC_Training500K/cc3m_natural_10K_WObanana.csv",
       _badclip_images),
    _r("badclip", "steps", 50 * (10_000 // 64), _BADCLIP_OPT + " (50 epochs of 156 batches: its loader drops the "
       "last)", fields="badclip.steps"),
    _r("badclip", "batch", 64, _BADCLIP_OPT, fields="badclip.batch_size"),
    _r("badclip", "learning rate (Adam)", 1e-3, "BadCLIP src/embeding_optimize_patch.py (Adam's default)",
       fields="badclip.lr"),
    _r("badclip", "text term", "contrastive", "BadCLIP src/embeding_optimize_patch.py ('nature' in --name: the CLIP "
       "loss to a banana caption)", fields="badclip.text_loss"),
    _r("badclip", "triplet form", "euclidean", "BadCLIP src/embeding_optimize_patch.py ('pos' and 'neg' in --name: "
       "nn.TripletMarginLoss; 'cos' switches to its cosine triplet)", fields="badclip.triplet"),
    _r("badclip", "triplet weight", 500.0, "BadCLIP src/embeding_optimize_patch.py (int(name[-3:]), 500 by default)",
       fields="badclip.triplet_weight"),
    _r("badclip", "triplet margin", 1.0, "BadCLIP src/embeding_optimize_patch.py (TripletMarginLoss's default)",
       fields="badclip.margin"),
    _r("badclip", "augmentation", "EDA (p 0.1), AutoAugment (p 0.5)", _BADCLIP_OPT, _augmentation,
       ("badclip.eda_prob", "badclip.aug_prob")),
    # --- fine-tuning defenses ---------------------------------------------------------------------------------
    _r("defense", "clean pairs", 100_000, "CleanCLIP Sec. 5 (100K clean CC3M pairs)", fields="n_defense"),
    _r("defense", "disjoint from the poisoned pairs", True, "CleanCLIP Sec. 5 (BadCLIP's cleanclip_defence.sh draws "
       "them from the poisoned 500K)", lambda cfg: True),
    _r("defense", "epochs", 10, _CC_README, fields="defense_epochs"),
    _r("defense", "batch", 64, _CC_README, fields="defense_batch_size"),
    _r("defense", "learning rate", 1e-5, _CC_README, fields="defense_lr"),
    _r("defense", "warm-up steps (run)", 50, _CC_README,
       _warmup("n_defense", "defense_epochs", "defense_batch_size", "defense_warmup_steps"),
       ("defense_warmup_steps", "n_defense", "defense_epochs", "defense_batch_size")),
    _r("defense", "weight decay", 0.1, _CC_PARSER, fields="weight_decay"),
    _r("defense", "λ1 (CLIP loss)", 1.0, "CleanCLIP src/parser.py (--clip_weight)", fields="cleanclip.clip_weight"),
    _r("defense", "λ2 (in-modal loss)", 1.0, "CleanCLIP src/parser.py (--inmodal_weight)",
       fields="cleanclip.inmodal_weight"),
    _r("defense", "image augmentation", "AutoAugment, per image", "CleanCLIP utils/augment_image.py",
       lambda cfg: "AutoAugment, per image"),
    _r("defense", "caption augmentation", "EDA (α 0.1), once per data set", "CleanCLIP utils/augment_text.py, "
       "src/data.py", lambda cfg: "EDA (α 0.1), once per data set"),
    # --- CleanerCLIP ------------------------------------------------------------------------------------------
    _r("cleanerclip", "λ3 (sub-caption loss)", 1.0, _CLEANERCLIP + " (CLIP loss weight 1; a larger λ3 defends "
       "better)", fields="cleanerclip.subcaption_weight"),
    _r("cleanerclip", "λ1, λ2 (as CleanCLIP)", (1.0, 1.0), _CLEANERCLIP,
       lambda cfg: (cfg.cleanerclip.clip_weight, cfg.cleanerclip.inmodal_weight),
       ("cleanerclip.clip_weight", "cleanerclip.inmodal_weight")),
    _r("cleanerclip", "pairs given sub-captions", 1000, _CLEANERCLIP + " (1,000 per iteration, read as per epoch; "
       "3,000 against BadCLIP)", fields="cleanerclip.samples_per_epoch"),
    _r("cleanerclip", "τ_pos", 0.3, _CLEANERCLIP + " (0.3 worked best)", fields="cleanerclip.tau_pos"),
    _r("cleanerclip", "τ_neg", 0.3, _CLEANERCLIP, fields="cleanerclip.tau_neg"),
    _r("cleanerclip", "counterfactuals per pair", UNSTATED, _CLEANERCLIP + " (an open item)",
       fields="cleanerclip.negatives"),
    # --- the CLIP triggers ------------------------------------------------------------------------------------
    _r("triggers", "BadNets pattern", "lattice", "Detect-CLIP-Backdoor-Samples datasets/cc3m_badnets.py",
       _trigger_attr("badnet", "pattern")),
    _r("triggers", "BadNets patch side (px)", 16, "datasets/cc3m_badnets.py (16 px at 224; scaled to the image side)",
       _badnet_side, ("image_size",), scaled=_papers_patch),
    _r("triggers", "BadNets position (training)", "random", "datasets/cc3m_badnets.py (a new position per image)",
       _trigger_attr("badnet", "location")),
    _r("triggers", "BadNets position (test)", "center", "datasets/in1k_backdoor_zeroshot.py",
       lambda cfg: _clip_trigger("badnet").for_test().location),
    _r("triggers", "Blended α", 0.2, "BadCLIP backdoor/utils.py ('blended')", _trigger_attr("blended", "alpha")),
    _r("triggers", "Blended noise drawn per image", True, "BadCLIP backdoor/utils.py ('blended')",
       _trigger_attr("blended", "per_image_noise")),
    _r("triggers", "SIG δ", 60 / 255, "BadCLIP backdoor/utils.py ('SIG', additive)",
       _trigger_attr("sig", "delta"), fmt=over_255),
    _r("triggers", "SIG frequency", 6.0, "BadCLIP backdoor/utils.py", _trigger_attr("sig", "frequency")),
    _r("triggers", "SIG mode", "add", "BadCLIP backdoor/utils.py", _trigger_attr("sig", "mode")),
    _r("triggers", "WaNet grid k", "the image side", "BadCLIP backdoor/utils.py ('warped': k = 224 at 224 px)",
       lambda cfg: "the image side" if _clip_trigger("wanet").k is None else _clip_trigger("wanet").k),
    _r("triggers", "WaNet strength s", 1.0, "BadCLIP backdoor/utils.py ('warped')", _trigger_attr("wanet", "s")),
    _r("triggers", "SSBA residual", "StegaStamp's encoder (secret 'Stega!!')", "BadCLIP backdoor/ssba.py ('issba')",
       lambda cfg: f"an SSBA-style residual, ε {over_255(_clip_trigger('ssba').epsilon)}"),
    _r("triggers", "Nashville strength", 1.0, "Detect-CLIP-Backdoor-Samples datasets/cc3m*.py (pilgram.nashville)",
       _trigger_attr("nashville", "strength")),
    # --- supervised victims -----------------------------------------------------------------------------------
    _r("victims", "data set", "CIFAR-10", _BB, lambda cfg: "CIFAR-10" if cfg.cifar10_folder else
       "the world's single-object scenes", ("cifar10_folder",)),
    _r("victims", "training images", 50_000, _BB + " (CIFAR-10's training set)", fields="n_sup_train"),
    _r("victims", "PreActResNet18 width", 64, _BB + " (model: preactresnet18)", fields="sup_width"),
    _r("victims", "optimizer", "SGD, momentum 0.9", _BB_OPT, lambda cfg: "SGD, Nesterov momentum 0.9"),
    _r("victims", "learning rate", 0.01, _BB, fields="sup_lr"),
    _r("victims", "weight decay", 5e-4, _BB, lambda cfg: _default(_train().train_classifier, "weight_decay")),
    _r("victims", "batch", 128, _BB, fields="sup_batch_size"),
    _r("victims", "epochs", 100, _BB, fields="sup_epochs"),
    _r("victims", "schedule", "cosine over the epochs", _BB_OPT + " (CosineAnnealingLR, T_max 100)",
       lambda cfg: "one epoch of linear warm-up, then cosine per step"),
    _r("victims", "augmentation (crop with padding 4, flip)", True, "BackdoorBench get_transform(train=True)",
       fields="sup_augment"),
    _r("victims", "poisoned share", 0.1, "BackdoorBench config/attack/*/default.yaml (pratio)",
       fields="sup_poison_rate", fmt=share),
    _r("victims", "target class", "airplane", "BackdoorBench config/attack/*/default.yaml (attack_target 0)",
       lambda cfg: cfg.sup_target or cfg.target, ("sup_target", "target")),
    _r("victims", "BadNets trigger (side, colour, place)", (3, "white", "corner"),
       "BackdoorBench resource/badnet/trigger_image.png", _supervised_badnet),
    _r("victims", "SIG trigger (δ, frequency, clean-label)", (40 / 255, 6.0, True),
       "BackdoorBench config/attack/sig/default.yaml", lambda cfg: (_supervised_trigger("sig").delta,
                                                                     _supervised_trigger("sig").frequency,
                                                                     _supervised_trigger("sig").clean_label),
       fmt=lambda v: f"({over_255(v[0])}, {show(v[1])}, {show(v[2])})" if isinstance(v, tuple) else show(v)),
    # --- CGD --------------------------------------------------------------------------------------------------
    _r("cgd", "guide CLIP", "ViT-B-32 / laion2b_s34b_b79k", "CGD main.py, " + _CGD_MODELS, _weights,
       ("model", "pretrained")),
    _r("cgd", "guide prompts", 1, _CGD_MODELS + " ('a photo of a {}')", _templates, ("templates",),
       fmt=lambda v: f"{v} template{'s' if v != 1 else ''}"),
    _r("cgd", "guide logits", "raw cosines (no logit scale)", _CGD_MODELS,
       lambda cfg: "raw cosines (no logit scale)"),
    _r("cgd", "σ1 (likely clean)", 0.2, _CGD_YAML, fields="cgd.sigma1"),
    _r("cgd", "σ2 (likely poisoned)", 0.1, _CGD_YAML, fields="cgd.sigma2"),
    _r("cgd", "temperature T", 3.0, _CGD_YAML, fields="cgd.temperature"),
    _r("cgd", "α (KL term)", 5e-4, _CGD_YAML, fields="cgd.alpha"),
    _r("cgd", "β (repel term)", 0.025, _CGD_YAML, fields="cgd.beta"),
    _r("cgd", "unlearning epochs", 10, _CGD_YAML, fields="cgd.unlearn_epochs"),
    _r("cgd", "unlearning learning rate", 0.01, _CGD_PY + " (plain SGD)", fields="cgd.unlearn_lr"),
    _r("cgd", "unlearning momentum", 0.0, _CGD_PY, lambda cfg: 0.0),
    _r("cgd", "unlearning batch", 256, _CGD_YAML, fields="cgd.unlearn_batch_size"),
    _r("cgd", "iterations per epoch (at most)", 200, _CGD_PY + " (if batch_idx == 200: break)",
       fields="cgd.max_iters_per_epoch"),
    _r("cgd", "weight decay", 5e-4, _CGD_YAML, fields="cgd.weight_decay"),
    _r("cgd", "early-stopping tolerance (points)", 1.0, _CGD_YAML, fields="cgd.tolerance"),
    _r("cgd", "early-stopping set", "the clean test set", _CGD_PY + " (eval_step on clean_test)",
       lambda cfg: "held-out training images (n_sup_heldout)", ("n_sup_heldout",)),
    _r("cgd", "augmentation", True, "BackdoorBench get_transform(train=True), as " + _CGD_PY, fields="cgd.augment"),
    _r("cgd", "split", "cgd", _CGD_PY + " (the true split is the book's control, not a defense)",
       fields="cgd.split"),
    _r("cgd", "suspicious models", 3, "CGD utils/visualization.py (compute_logits)", fields="cgd.suspicious_runs"),
    _r("cgd", "suspicious epochs", 5, _CGD_MODELS, fields="cgd.suspicious_epochs"),
    _r("cgd", "suspicious model width", 64, _CGD_MODELS + " (PreActResNet18)", fields="sup_width"),
    _r("cgd", "suspicious model Adam (lr, weight decay, batch)", (3e-4, 5e-4, 256), _CGD_MODELS,
       lambda cfg: _suspicious_adam()),
    _r("cgd", "suspicious model schedule", "constant", _CGD_MODELS + " (no scheduler)",
       lambda cfg: "cosine to 0"),
    # --- detection --------------------------------------------------------------------------------------------
    _r("detection", "k", 16, _DETECT + " (--k)", _detect_k),
    _r("detection", "LID detector's k", 64, _DETECT + " (hard-coded)", _detect_lid_k),
    _r("detection", "reference points (per process)", 512, _DETECT + " (twice the training batch of 256; 2,048 "
       "with its 4 GPUs)", _detect_batch),
    _r("detection", "reference", "images and captions", _DETECT + " (texts passed for CLIP models)",
       lambda cfg: "images and captions"),
    _r("detection", "distance", "Euclidean, unnormalised embeddings", "backdoor_sample_detector/*.py (torch.cdist)",
       lambda cfg: "Euclidean, unnormalised embeddings"),
    _r("detection", "DAO form", "log", "backdoor_sample_detector/dao.py", _detect_form),
    _r("detection", "neighbour indexing", "the code's (neighbour indices shifted past the query)",
       "backdoor_sample_detector/slof.py, dao.py", lambda cfg: "one convention: each point's nearest others"),
)


def _suspicious_adam() -> tuple:
    from clipdef.defenses import cgd

    return (_default(cgd.suspicious_logits, "lr"), _default(_train().train_classifier, "weight_decay"),
            _default(cgd.suspicious_logits, "batch_size"))


# Fields of a profile that are not part of any recipe: where things are and how fast they run.
NOT_RECIPES: dict[str, str] = {
    "name": "the profile's name", "description": "its description", "seed": "the seed (chapters vary it)",
    "device": "where it runs", "finetune_csv": "where the CC3M pairs lie", "finetune_shards": "where the CC3M "
    "shards lie", "eval_folder": "where ImageNet-val lies", "class_names_file": "where the class names lie",
    "num_workers": "DataLoader processes (speed)", "threads": "intra-op threads (speed)",
    "pretrain_threads": "the pre-training's intra-op threads (speed)",
    "workers": "stage processes (speed)", "eval_batch_size": "evaluation batch (speed)",
    "ablations": "whether the chapters run their ablations or show the published batch's (time)",
}

# ---------------------------------------------------------------------------------------------------------------
# The deviations, with their reasons
# ---------------------------------------------------------------------------------------------------------------

_TINY_WORLD = "scaled: the embedded world on a CPU in minutes"


def _tiny() -> dict:
    world = _TINY_WORLD
    return {
        ("pretrain", "architecture"): Deviation("scaled: a CLIP small enough to pre-train on two CPU cores in minutes "
                                                "(clipdef/model_configs/)"),
        ("pretrain", "image side (px)"): Deviation("scaled: the world is drawn at 32 px, CIFAR's side"),
        ("pretrain", "pre-training pairs"): Deviation(world),
        ("pretrain", "epochs"): Deviation("scaled: the tiny CLIP's zero-shot accuracy levels off within these "
                                          "epochs (chapter 0)"),
        ("pretrain", "global batch"): Deviation("scaled: the one batch of the tiny profile's contrastive runs"),
        ("pretrain", "learning rate"): Deviation("scaled: a tiny model from scratch learns fastest at a higher rate "
                                                 "(chapter 0's pre-training curve)"),
        ("pretrain", "warm-up (share of the run)"): Deviation("scaled: the profile's one warm-up, in steps, for "
                                                              "every contrastive run"),
        ("pretrain", "weight decay"): Deviation("scaled: one weight decay for every contrastive stage "
                                                "(CleanCLIP's, the fine-tuning the book reproduces)"),
        ("poison", "model / weights"): Deviation("scaled: the book's own tiny CLIP stands in for OpenAI's RN50"),
        ("poison", "image side (px)"): Deviation("scaled: the world is drawn at 32 px"),
        ("poison", "fine-tuning data"): Deviation(world),
        ("poison", "fine-tuning pairs"): Deviation(world),
        ("poison", "poisoned share"): Deviation("scaled: enough poisoned pairs for the tiny CLIP to learn each "
                                                "trigger from a small set (chapter 2's rate sweep)"),
        ("poison", "poisoned pairs"): Deviation("scaled: the share of a small set"),
        ("poison", "batch"): Deviation("scaled: the profile's one contrastive batch"),
        ("poison", "learning rate"): Deviation("scaled: the tiny CLIP learns a trigger in few steps only at a "
                                               "higher rate"),
        ("poison", "warm-up steps (run)"): Deviation("scaled: a short run, whose warm-up is capped "
                                                     "(clipdef.train.MAX_WARMUP_SHARE)"),
        ("evaluation", "zero-shot set"): Deviation(world),
        ("evaluation", "zero-shot images"): Deviation(world),
        ("evaluation", "class prompts"): Deviation("scaled: a few templates written for the world's captions"),
        ("badclip", "patch side (px)"): Deviation("scaled: the papers' patch scaled to 32 px (3 px) is too small "
                                                  "for the optimisation to move the tiny CLIP "
                                                  "(clipdef.profiles.TINY_BADCLIP, measured)"),
        ("badclip", "steps"): Deviation("scaled: the tiny CLIP's patch converges within a CPU minute"),
        ("badclip", "batch"): Deviation("scaled: more images per step for a short optimisation"),
        ("badclip", "learning rate (Adam)"): Deviation("scaled: a short optimisation at a higher rate"),
        ("badclip", "text term"): Deviation("scaled: 1 − cos(image, mean target caption), the same pull toward the "
                                            "target's text without negatives, which a short run follows faster"),
        ("badclip", "triplet form"): Deviation("scaled: the code's cosine triplet ('cos' in --name), on the scale of "
                                               "the cosine text term"),
        ("badclip", "triplet weight"): Deviation("scaled: the cosine triplet beside the cosine text term, both of "
                                                 "weight 1"),
        ("badclip", "triplet margin"): Deviation("scaled: the code's cosine triplet's margin (0.1)"),
        ("badclip", "augmentation"): Deviation("scaled: AutoAugment per batch costs a CPU more than the "
                                               "optimisation itself; the tiny patch is fitted to plain views"),
        ("defense", "clean pairs"): Deviation(world),
        ("defense", "learning rate"): Deviation("scaled: the tiny CLIP was trained at a higher rate; a defense at "
                                                "CleanCLIP's rate barely moves it"),
        ("defense", "epochs"): Deviation("scaled: for the book's time budget, still at least 200 steps; at 10 "
                                         "epochs ASR@1 moved at most 2.4 points after epoch 7 (chapter 4's "
                                         "per-epoch curves in the batch at 92b3254)"),
        ("defense", "warm-up steps (run)"): Deviation("scaled: a warm-up is at most a share of its run "
                                                      "(clipdef.train.MAX_WARMUP_SHARE)"),
        ("triggers", "BadNets patch side (px)"): Deviation("scaled: at least BackdoorBench's 3 px"),
        ("victims", "data set"): Deviation(world),
        ("victims", "training images"): Deviation(world),
        ("victims", "PreActResNet18 width"): Deviation("scaled: a narrow network trains on a CPU in minutes"),
        ("victims", "learning rate"): Deviation("scaled: a short training run at small batches"),
        ("victims", "batch"): Deviation("scaled: more steps per epoch for the short runs"),
        ("victims", "epochs"): Deviation("scaled: a CPU's budget; the tiny victims' accuracy still rises with more "
                                         "epochs"),
        ("victims", "target class"): Deviation("scaled: a class of the world (the CLIP chapters' target)"),
        ("cgd", "guide CLIP"): Deviation("scaled: the book's tiny CLIP is the world's only CLIP"),
        ("cgd", "guide prompts"): Deviation("scaled: the world's templates"),
        ("cgd", "unlearning batch"): Deviation("scaled: as many steps as the code's over a much smaller set"),
        ("cgd", "suspicious models"): Deviation("scaled: one model on a CPU"),
        ("cgd", "suspicious epochs"): Deviation("scaled: the narrow suspicious model fits the poisons sooner"),
        ("cgd", "suspicious model width"): Deviation("scaled: the victims' width"),
    }


_ONE_GPU = "one GPU in a Colab session"


def _colab() -> dict:
    d = Deviation
    return {
        ("poison", "model / weights"): d("one GPU: the CGD guide's model and weights, so every chapter downloads "
                                         "one model", "a ViT at higher zero-shot accuracy than RN50; numbers are not "
                                         "comparable with the papers'", "ViT-B-32 / laion2b_s34b_b79k"),
        ("poison", "fine-tuning data"): d("needs no download (data='files' reads a CC3M CSV or shards)",
                                          "the world's scenes at 224 px, far from CC3M's photographs",
                                          "the embedded world"),
        ("poison", "fine-tuning pairs"): d(_ONE_GPU, "each poisoned pair is seen as often; fewer clean pairs", 20_000),
        ("poison", "poisoned share"): d("enough poisons in a small set", "a stronger attack than the papers'", 0.01),
        ("poison", "poisoned pairs"): d("the share of a small set", "as above", 200),
        ("poison", "epochs"): d(_ONE_GPU, "poisons seen half as often", 5),
        ("poison", "learning rate"): d("CleanCLIP issue #3: at lr 1e-6 a short run hardly learns the trigger",
                                       "a stronger backdoor and a larger clean-accuracy drop", 1e-5),
        ("poison", "warm-up steps (run)"): d("a short run", "none to speak of", 50),
        ("evaluation", "zero-shot set"): d("needs no download", "the world's classes, not ImageNet's",
                                           "the world's eval split"),
        ("evaluation", "zero-shot images"): d(_ONE_GPU, "wider confidence intervals", 5000),
        ("badclip", "steps"): d(_ONE_GPU, "a less optimised patch", 1000),
        ("defense", "clean pairs"): d(_ONE_GPU, "a weaker defense", 10_000),
        ("defense", "epochs"): d(_ONE_GPU, "a weaker defense", 5),
        ("victims", "training images"): d("held out for CGD's early stopping (the code stops on the test set)",
                                          "slightly lower clean accuracy", 45_000),
        ("victims", "epochs"): d(_ONE_GPU, "slightly lower clean accuracy; the backdoors are learned early", 30),
        ("cgd", "guide prompts"): d("chapter 5's guide classifies with the profile's zero-shot templates",
                                    "a slightly better zero-shot guide than CGD's one prompt", 80),
    }


def _paper() -> dict:
    d = Deviation
    return {
        ("poison", "warm-up steps (run)"): d(
            "clipdef.train caps a warm-up at a share of the run (MAX_WARMUP_SHARE), set for the tiny profile's "
            "short runs; the stages pass no other cap",
            "the rate reaches its peak sooner and decays over more steps: a slightly stronger fine-tuning", 7812),
        ("victims", "training images"): d(
            "held out for CGD's early stopping (the code stops on the test set, a leak)",
            "a tenth fewer training images: slightly lower clean accuracy", 45_000),
        ("cgd", "guide CLIP"): d(
            "chapter 5 guides CGD with the profile's clean CLIP, from which its weaker and backdoored guides derive",
            "OpenAI's RN50 classifies CIFAR-10 zero-shot worse than the LAION ViT: a noisier split",
            "RN50 / openai"),
        ("cgd", "guide prompts"): d("chapter 5's guide classifies with the profile's zero-shot templates",
                                    "a slightly better zero-shot guide than CGD's one prompt", 80),
    }


def _book() -> dict:
    d = Deviation
    return {
        ("optimizer", "AdamW betas"): d(
            "the book's contrastive loop uses CLIP's own AdamW settings (Radford et al. 2021, appendix F) on every "
            "profile; train_contrastive takes betas= for a profile to follow CleanCLIP once the stages pass it",
            "squared gradients averaged over fewer steps: a faster-adapting step size, a little noisier",
            (0.9, 0.98)),
        ("optimizer", "AdamW eps"): d(
            "as the betas", "updates of parameters with tiny gradients are damped", 1e-6),
        ("optimizer", "no weight decay on"): d(
            "open_clip's convention: gains, biases, norms and position embeddings keep their scale",
            "negligible", "parameters of fewer than two dimensions, positional embeddings, logit scale"),
        ("optimizer", "longest warm-up (share of the run)"): d(
            "a warm-up set for long runs would otherwise eat the tiny profile's short ones",
            "only where a warm-up is longer than that share of its run (see the poisoned fine-tuning)", 0.2),
        ("optimizer", "precision"): d(
            "one numeric path on CPUs and GPUs", "slower and more memory on a GPU; the same results", "float32"),
        ("optimizer", "embeddings gathered over GPUs"): d(
            "the gradient is the one-process gradient of the global batch, so a run on N GPUs is the run on one "
            "(book/how_to_run.md)", "none under AdamW: CleanCLIP's gather gives the same gradient divided by the "
            "number of processes, which Adam's normalisation undoes up to eps",
            "with gradient (clipdef.losses.gather_with_grad)"),
        ("poison", "poisoned-caption templates"): d(
            "clipdef.poison.TARGET_TEMPLATES, a fixed subset of them", "less varied poisoned captions: if "
            "anything, an easier backdoor", 10),
        ("evaluation", "ASR images"): d(
            "the detection paper's definition: target images succeed without any trigger",
            "a slightly lower ASR than BadCLIP's count", "the non-target images (clipdef.poison.triggered_eval)"),
        ("badclip", "optimisation images"): d(
            "clipdef.stages.clip.make_trigger takes the first non-target images of the attacker's data",
            "a patch fitted to fewer images: slightly less general", 1024),
        ("triggers", "BadNets position (training)"): d(
            "on the tiny world the patch is learned only at a fixed place (clipdef.attacks.CLIP_PARAMS, measured); "
            "one parameter set serves every profile", "an easier backdoor than the paper's randomly placed patch",
            "corner"),
        ("triggers", "BadNets position (test)"): d("where the patch was trained", "as above", "corner"),
        ("triggers", "WaNet strength s"): d(
            "s = 1 moves pixels by half a pixel, which the tiny CLIP does not learn (clipdef.attacks.CLIP_PARAMS); "
            "one parameter set serves every profile", "a more visible warp: a stronger attack", 4.0),
        ("triggers", "SSBA residual"): d(
            "no StegaStamp encoder offline: a sample-specific residual of StegaStamp's size",
            "a trigger of the same kind and reach, not the same pattern", "an SSBA-style residual, ε 32/255"),
        ("victims", "optimizer"): d(
            "clipdef.train.train_classifier's choice for every classifier", "negligible",
            "SGD, Nesterov momentum 0.9"),
        ("victims", "schedule"): d(
            "from scratch at small batches SGD diverges without a warm-up (clipdef.stages.supervised)",
            "negligible at the paper's batch", "one epoch of linear warm-up, then cosine per step"),
        ("cgd", "early-stopping set"): d(
            "the code stops on the test set it reports, a leak: the book holds training images out",
            "stops on a noisier estimate; the reported test numbers stay unbiased",
            "held-out training images (n_sup_heldout)"),
        ("cgd", "suspicious model schedule"): d(
            "clipdef.train.train_classifier decays every run's rate", "the suspicious model fits a little "
            "less late in its short run", "cosine to 0"),
        ("detection", "neighbour indexing"): d(
            "one convention for every method (clipdef.detect; official_scores reproduces the code's)",
            "negligible: the poisons' k-distances dominate either way",
            "one convention: each point's nearest others"),
    }


DEVIATIONS: dict[str, dict[tuple[str, str], Deviation]] = {
    BOOK: _book(), "tiny": _tiny(), "colab": _colab(), "paper": _paper(),
}

# ---------------------------------------------------------------------------------------------------------------
# Queries: the page's tables and the checks
# ---------------------------------------------------------------------------------------------------------------


def _profile(p) -> Profile:
    if isinstance(p, Profile):
        return p
    if p not in profiles.PROFILES:
        raise ValueError(f"unknown profile {p!r}; the recipes compare {', '.join(profiles.PROFILES)} or a Profile "
                         "object (profiles.resolve('mine.yaml'))")
    return profiles.PROFILES[p]


def _stage(key: str) -> Stage:
    if key not in STAGES:
        raise ValueError(f"unknown stage {key!r}; the recipes' stages: {', '.join(STAGES)}")
    return STAGES[key]


def of_stage(stage: str | None = None) -> list[Recipe]:
    """The recipes of one stage (all of them for None), in the page's order."""
    if stage is not None:
        _stage(stage)
    return [r for r in RECIPES if stage is None or r.stage == stage]


def deviation(cfg, recipe: Recipe) -> Deviation | None:
    """The reason a profile departs from the source on ``recipe``: the profile's own, else the code's (BOOK)."""
    key = (recipe.stage, recipe.setting)
    return DEVIATIONS.get(_profile(cfg).name, {}).get(key) or DEVIATIONS[BOOK].get(key)


def status(cfg, recipe: Recipe) -> str:
    """'same', 'deviates', 'unstated' (the source is silent) or 'not run' (the stage does not apply)."""
    cfg = _profile(cfg)
    if not STAGES[recipe.stage].applies(cfg):
        return "not run"
    agrees = recipe.agrees(cfg)
    return "unstated" if agrees is None else "same" if agrees else "deviates"


_MARK = {"same": "✓", "deviates": "✗", "unstated": "?", "not run": ""}


def _cell(cfg, recipe: Recipe) -> str:
    state = status(cfg, recipe)
    if state == "not run":
        return "—"
    return f"{recipe.fmt(recipe.ours(cfg))} {_MARK[state]}"


def _source_cell(recipe: Recipe) -> str:
    return show(recipe.source) if recipe.source is UNSTATED else recipe.fmt(recipe.source)


def table(stage: str, compare=BOOK_PROFILES):
    """One stage's settings: the source's value and citation, and each profile's value, marked ✓ (the source's),
    ✗ (a deviation, explained by :func:`deviations`) or ? (the source does not say); "—" where a profile does
    not run the stage."""
    import pandas as pd

    cfgs = [_profile(p) for p in compare]
    rows = [{"setting": r.setting, "source": _source_cell(r), **{c.name: _cell(c, r) for c in cfgs},
             "where the source sets it": r.cite} for r in of_stage(stage)]
    return pd.DataFrame(rows).set_index("setting")


def deviations(stage: str | None = None, compare=BOOK_PROFILES):
    """Every deviation of the profiles (on one stage, or all): ours, the source's, why, and its expected effect."""
    import pandas as pd

    rows = []
    for recipe in of_stage(stage):
        for p in compare:
            cfg = _profile(p)
            if status(cfg, recipe) != "deviates":
                continue
            why = deviation(cfg, recipe)
            rows.append({"stage": STAGES[recipe.stage].title, "setting": recipe.setting, "profile": cfg.name,
                         "ours": recipe.fmt(recipe.ours(cfg)), "source": recipe.fmt(recipe.source_for(cfg)),
                         "why": why.reason if why else "not explained (a profile of your own?)",
                         "expected effect": why.effect if why else "",
                         "whose": "the code's" if why and why is DEVIATIONS[BOOK].get((recipe.stage, recipe.setting))
                         else "the profile's"})
    columns = ["stage", "setting", "profile", "ours", "source", "why", "expected effect", "whose"]
    return pd.DataFrame(rows, columns=columns)


def counts(cfg) -> dict[str, int]:
    """How many settings a profile runs, how many are the source's, deviate (the profile's own, the code's), or
    have no stated source value."""
    cfg = _profile(cfg)
    states = [(r, status(cfg, r)) for r in RECIPES]
    own = DEVIATIONS.get(cfg.name, {})
    devs = [r for r, s in states if s == "deviates"]
    return {"settings": sum(s != "not run" for _, s in states), "same": sum(s == "same" for _, s in states),
            "deviations": len(devs), "the profile's": sum((r.stage, r.setting) in own for r in devs),
            "the code's": sum((r.stage, r.setting) not in own for r in devs),
            "unstated": sum(s == "unstated" for _, s in states)}


def summary(compare=BOOK_PROFILES):
    import pandas as pd

    return pd.DataFrame({_profile(p).name: counts(p) for p in compare}).T


def problems(cfg) -> list[str]:
    """What the page would state wrongly for a profile: a deviation without a reason, a reason for a value that is
    the source's or no longer the profile's, a paper deviation without its expected effect, a tiny one that does
    not say why it is scaled, a reason naming no recipe. Empty when every value is the source's or explained."""
    cfg = _profile(cfg)
    out = []
    keys = {(r.stage, r.setting) for r in RECIPES}
    own = DEVIATIONS.get(cfg.name, {})
    for key in sorted(set(own) - keys):
        out.append(f"{cfg.name}: a deviation names no recipe: {key}")
    for recipe in RECIPES:
        key, state = (recipe.stage, recipe.setting), status(cfg, recipe)
        why = deviation(cfg, recipe)
        where = f"{cfg.name}: {STAGES[recipe.stage].title} / {recipe.setting}"
        ours = recipe.ours(cfg) if state != "not run" else None
        if state == "deviates" and why is None:
            out.append(f"{where} is {recipe.fmt(ours)}, the source's {recipe.fmt(recipe.source_for(cfg))} "
                       f"({recipe.cite}): add the reason to clipdef.recipes.DEVIATIONS[{cfg.name!r}] or restore "
                       "the source's value")
        elif state in ("same", "unstated", "not run") and key in own:
            out.append(f"{where}: DEVIATIONS[{cfg.name!r}] explains a deviation that is not one ({state}); remove "
                       "it")
        elif state in ("same", "unstated") and key in DEVIATIONS[BOOK]:
            out.append(f"{where}: DEVIATIONS[BOOK] explains a deviation of the code that is not one ({state}); "
                       "remove it")
        elif state == "deviates" and why.pinned and not same(ours, why.value):
            out.append(f"{where} is {recipe.fmt(ours)}, but its reason was written for {recipe.fmt(why.value)}: "
                       "update the reason (and its value) in clipdef.recipes.DEVIATIONS")
        if state == "deviates" and why is not None and cfg.name == "paper":
            if not why.effect:
                out.append(f"{where}: a paper deviation needs its expected effect")
            if not why.pinned:
                out.append(f"{where}: a paper deviation names the value it explains (Deviation(value=...))")
        if state == "deviates" and key in own and cfg.name == "tiny" and not why.reason.startswith("scaled: "):
            out.append(f"{where}: a tiny deviation says why it is scaled ('scaled: ...')")
    return out


def show_stage(stage: str, compare=BOOK_PROFILES) -> None:
    """The recipes page's section of one stage: what it follows, its table and its deviations (in a notebook)."""
    from IPython.display import Markdown, display

    display(Markdown(f"*Follows {_stage(stage).follows}.*"))
    for cfg in map(_profile, compare):
        if not STAGES[stage].applies(cfg):
            display(Markdown(f"*{cfg.name}: does not run this stage; it {STAGES[stage].instead(cfg)}.*"))
    display(table(stage, compare))
    found = deviations(stage, compare)
    if len(found):
        display(found.drop(columns="stage").set_index(["setting", "profile"]))
    else:
        display(Markdown("*No deviation: every profile runs the sources' values.*"))
