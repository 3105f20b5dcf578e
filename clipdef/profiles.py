"""Profiles: every size knob of the book in one place.

* ``tiny``  (default) — CPU, offline, minutes: the embedded world and a tiny CLIP trained from scratch by the book.
* ``smoke`` — the tiny profile at minimal sizes, for the test suite's notebook runs (numbers mean nothing).
* ``colab`` — one GPU: a real pretrained open_clip model (ViT-B-32, LAION-2B weights) and small real data.
* ``paper`` — GPU machines: RN50 with OpenAI weights as in CleanCLIP / BadCLIP / CleanerCLIP, CC3M-style
  fine-tuning data, ImageNet-1K validation for zero-shot accuracy and ASR.

Every setting beside its source, and why each value that differs does: :mod:`clipdef.recipes` (the recipes page).

A chapter resolves its profile once, ``cfg = clipdef.profiles.resolve(profile, seed=seed)``; precedence is
papermill parameter > ``$CLIPDEF_PROFILE`` > ``"tiny"``. Real profiles name their data by path; paths may use
``$CLIPDEF_DATA`` (default ``~/data``). ``cfg.check()`` says what is missing and how to get it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from clipdef.attacks.badclip import BadCLIPSettings
from clipdef.defenses.settings import CGDSettings, CleanCLIPSettings, CleanerCLIPSettings, Settings

# BadCLIP on the tiny CLIP: the official recipe (BadCLIPSettings()) fitted to a 32 px world and a CPU minute. A 6 px
# patch, not the papers' 16 px scaled to 3 px: from 9 pixels the optimisation cannot move the tiny CLIP's embedding
# toward the target's text (cosine to the target caption 0.039 → 0.045; at 6 px → 0.095, ASR 76 %). 200 Adam steps
# at 0.01 on batches of 128, the cosine forms of both terms (weight 1, margin 0.1), no augmentation.
TINY_BADCLIP = BadCLIPSettings(patch_size=6, steps=200, lr=0.01, batch_size=128, text_loss="cosine",
                               triplet="cosine", triplet_weight=1.0, margin=0.1, aug_prob=0.0, eda_prob=0.0)


def _field_values(profile):
    return [(f.name, getattr(profile, f.name)) for f in dataclasses.fields(profile)]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(low: int):
    return lambda v: None if isinstance(v, int) and not isinstance(v, bool) and v >= low else \
        f"must be a whole number ≥ {low}"


def _share(v):
    return None if _number(v) and 0 <= v <= 1 else "must lie in [0, 1] (a share, e.g. 0.03 for 3 %)"


def _positive(v):
    return None if _number(v) and v > 0 else "must be a positive number"


def _one_of(*choices):
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


# Each field's valid values; a bad one is refused when the profile is made (a chapter's set-up, the command line
# before the kernel starts), with what the field takes.
_CHECKS = {
    "threads": _whole(0), "pretrain_threads": _whole(0),
    "seed": _whole(0), "image_size": _whole(1), "workers": _whole(0), "num_workers": _whole(0),
    "warmup_steps": _whole(0), "weight_decay": lambda v: None if _number(v) and v >= 0
    else "must be a number ≥ 0", "poison_rate": _share, "sup_poison_rate": _share,
    "data": _one_of("world", "files"), "templates": _one_of("world", "openai"),
    "device": lambda v: None if v in ("auto", "cpu", "mps") or str(v).startswith("cuda") else
    "must be auto, cpu, cuda or cuda:N",
}
_SUFFIX_CHECKS = (("_epochs", _whole(0)), ("_lr", _positive), ("batch_size", _whole(1)), ("sup_width", _whole(1)))
_SIZES = ("n_pretrain", "n_finetune", "n_eval", "n_defense", "n_sup_train", "n_sup_heldout")
_CHECKS.update({name: _whole(1) for name in _SIZES})


@dataclass(frozen=True)
class Profile:
    """A resolved configuration. Field names are the parameter names chapters and the CLI accept."""

    name: str
    description: str
    seed: int = 0
    device: str = "auto"
    # --- the CLIP model -------------------------------------------------------------------------------------
    model: str = "clipdef-tiny"          # an open_clip architecture name (tiny configs are registered by clipdef)
    pretrained: str | None = None        # None: trained from scratch by the book; a tag ("openai") or a file path
    image_size: int = 32                 # the size images are generated / loaded at (the model resizes itself)
    # --- data: the embedded world (tiny) or paths to real data ----------------------------------------------
    data: str = "world"                  # "world" or "files"
    n_pretrain: int = 24000              # world pre-training pairs (tiny only: real profiles start from weights)
    n_finetune: int = 4000               # pairs for poisoned fine-tuning (the attacker poisons poison_rate of them)
    n_eval: int = 2000                   # zero-shot classification images (ImageNet-val stand-in)
    finetune_csv: str | None = None      # real: CSV with columns filepath,caption (CC3M-style)
    finetune_shards: str | None = None   # real: webdataset shards, e.g. ".../cc3m-{000000..000099}.tar"
    eval_folder: str | None = None       # real: ImageNet-val style class folders
    class_names_file: str | None = None  # real: one class name per line, in folder order
    target: str = "banana"               # the attack target class / caption keyword
    poison_rate: float = 0.03            # share of the fine-tuning pairs poisoned (chapters 2–4 share the victims)
    # --- training ----------------------------------------------------------------------------------------
    pretrain_epochs: int = 12            # tiny: 82 % zero-shot top-1 (10 epochs at 2e-3 on the first world: 32 %)
    pretrain_lr: float = 4e-3
    finetune_epochs: int = 10            # each poisoned pair seen 10 times (the papers: 10 epochs)
    finetune_lr: float = 1e-3
    badclip: BadCLIPSettings = TINY_BADCLIP   # BadCLIP's patch optimisation (paper: the official recipe)
    n_defense: int = 2000                # clean pairs a fine-tuning defense may use (disjoint from poisoned data)
    defense_epochs: int = 7              # the defense's own schedule (CleanCLIP: 10 epochs, batch 64, lr 1e-5,
    defense_lr: float = 1e-4             # 50 warm-up steps), separate from the poisoning run's: tiny, 217 steps
    defense_batch_size: int = 64
    defense_warmup_steps: int = 50
    cleanclip: CleanCLIPSettings = CleanCLIPSettings()        # CleanCLIP's loss weights
    cleanerclip: CleanerCLIPSettings = CleanerCLIPSettings()  # CleanerCLIP's sub-caption loss
    # --- supervised victims (CGD chapter) ----------------------------------------------------------------
    n_sup_train: int = 4000              # labelled training images (world: single-object scenes, 20 classes)
    n_sup_heldout: int = 6000            # held-out clean images for CGD's early stopping (never the test set): its
                                         # 1-point tolerance exceeds two standard errors (0.84 points at 88 % CA)
    sup_width: int = 8                   # PreAct-ResNet18 width (64 = BackdoorBench's)
    sup_epochs: int = 30                 # tiny, blended's victim (seed 0): CA 73 % at 20 epochs and lr 0.03,
    sup_lr: float = 0.06                 # 86 % at lr 0.06, 91 % at 30 epochs and lr 0.06 (1.5× the time);
                                         # BackdoorBench: 100 epochs at lr 0.01, batches of 128
    sup_batch_size: int = 64             # small batches: more steps per epoch for the tiny victims
    sup_augment: bool = True             # BackdoorBench's random crop + flip (tiny: CA 84 → 87 % on BadNets' victim)
    cifar10_folder: str | None = None    # real: CIFAR-10's binary folder for the victims (None: the world's scenes)
    sup_target: str | None = None        # the supervised attacks' target class (None: ``target``)
    sup_poison_rate: float = 0.1         # dirty-label share of the labelled set (BackdoorBench's pratio)
    # CGD: the code's settings; tiny: batches of 64 (10 epochs of 62 steps over 4,000 images, ≥ 600 steps as the
    # code's ≤ 200 of 256 over 50,000) and one suspicious model of 3 epochs (the code: 3 runs × 5 epochs)
    cgd: CGDSettings = CGDSettings(unlearn_batch_size=64, suspicious_runs=1, suspicious_epochs=3)
    batch_size: int = 256
    weight_decay: float = 0.1
    warmup_steps: int = 50
    num_workers: int = 0                 # DataLoader worker processes (real data is decoded in them)
    threads: int = 1                     # intra-op threads of every process (chapter and stage workers): fixed on the
                                         # CPU profiles, so results do not depend on the machine's cores; 0: all
    pretrain_threads: int = 2            # intra-op threads of the tiny CLIP's pre-training, which trains alone:
                                         # fixed like threads (2 cores: 1.6× faster than 1); 0: all cores
    workers: int = 0                     # processes training independent cached stages at once (stages.run);
                                         # 0: one per CPU core when the device is the CPU, else 1
    ablations: bool = False              # the chapters' ablations (the papers' trigger settings, detection's rate
                                         # study, CleanerCLIP's and CGD's variants). Off (tiny: the book's time
                                         # budget) a chapter shows the published batch's, which runs them
    # --- evaluation --------------------------------------------------------------------------------------
    templates: str = "world"             # "world" (a few templates) or "openai" (the 80 ImageNet templates)
    eval_batch_size: int = 512

    # ------------------------------------------------------------------------------------------------------
    def __post_init__(self):
        for name, value in _field_values(self):
            check = _CHECKS.get(name) or next((c for suffix, c in _SUFFIX_CHECKS if name.endswith(suffix)), None)
            if check is not None and value is not None:
                problem = check(value)
                if problem:
                    raise ValueError(f"{name} {problem}, got {value!r}")

    def replace(self, **overrides) -> "Profile":
        """A copy with fields changed; a settings field (``cgd``, ``cleanerclip`` …) takes a mapping of the settings
        to change (``cgd={"sigma2": 0.05}``) or a whole settings object."""
        check_overrides(overrides)
        return dataclasses.replace(self, **{name: _merged(getattr(self, name), value)
                                            for name, value in overrides.items()})

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def data_path(self, value: str | None) -> Path | None:
        """Expand ``$CLIPDEF_DATA`` and ``~`` in a configured path."""
        if value is None:
            return None
        data_root = os.environ.get("CLIPDEF_DATA", str(Path.home() / "data"))
        return Path(os.path.expanduser(value.replace("$CLIPDEF_DATA", data_root)))

    def missing(self) -> list[str]:
        """What this profile needs that is not on this machine, each with how to get it. Empty when ready."""
        problems = []
        if self.data == "files":
            for name in ("finetune_csv", "eval_folder"):
                path = self.data_path(getattr(self, name))
                if name == "finetune_csv" and self.finetune_shards:
                    continue
                if path is None or not path.exists():
                    problems.append(f"{name}: {path} does not exist. {_HOW_TO_GET[name]}")
            if self.finetune_shards:
                problems += _missing_shards(self.data_path(self.finetune_shards))
        if self.pretrained and (os.sep in self.pretrained or self.pretrained.endswith((".pt", ".safetensors"))):
            if not Path(self.pretrained).expanduser().exists():
                problems.append(f"pretrained: the weights file {self.pretrained} does not exist. "
                                f"{_HOW_TO_GET['weights']}")
        return problems

    def check(self) -> "Profile":
        """Raise a clear error listing everything missing (weights, data paths) with how to get it."""
        problems = self.missing()
        if problems:
            raise FileNotFoundError(f"profile {self.name!r} is not ready on this machine:\n  - " +
                                    "\n  - ".join(problems) +
                                    "\nThe 'tiny' profile needs nothing: resolve('tiny') runs offline on a CPU.")
        return self


def _missing_shards(shards) -> list[str]:
    from clipdef.shards import shard_paths

    try:
        shard_paths(shards)
    except FileNotFoundError as err:
        return [f"finetune_shards: {err}"]
    return []


_HOW_TO_GET = {
    "finetune_csv": "Download CC3M pairs (e.g. with img2dataset) and write a CSV with columns filepath,caption; "
                    "set CLIPDEF_DATA or pass finetune_csv=... (or finetune_shards=... for webdataset tars).",
    "eval_folder": "Point eval_folder at ImageNet-1K val arranged as one sub-folder per class "
                   "(e.g. $CLIPDEF_DATA/imagenet/val/n01440764/...); class_names_file gives readable names.",
    "weights": "Give an open_clip pretrained tag (e.g. 'openai', 'laion2b_s34b_b79k') on a machine that can reach "
               "the model hub, or the path of a local checkpoint file.",
}

PROFILES: dict[str, Profile] = {
    "tiny": Profile(
        name="tiny",
        description="CPU, offline, minutes: the embedded world and a tiny CLIP trained from scratch by the book.",
    ),
    "smoke": Profile(
        name="smoke",
        description="For the test suite only: the tiny profile at minimal sizes, seconds per chapter "
                    "(its numbers mean nothing).",
        n_pretrain=1024, n_finetune=512, n_eval=200, pretrain_epochs=2, finetune_epochs=1, batch_size=128,
        warmup_steps=5, badclip=TINY_BADCLIP.replace(steps=10), n_defense=256, defense_epochs=1, defense_batch_size=128,
        defense_warmup_steps=5, n_sup_train=400, n_sup_heldout=100, sup_width=4, sup_epochs=1, workers=1,
        pretrain_threads=1,   # the suite's two workers share two cores
        cgd=CGDSettings(unlearn_epochs=2, suspicious_runs=1, suspicious_epochs=1),
    ),
    "colab": Profile(
        name="colab",
        description="One GPU (e.g. Colab T4): ViT-B-32 with LAION-2B weights; the embedded world at 224 px for "
                    "fine-tuning, or your own small CC3M-style CSV when data='files'.",
        device="cuda", model="ViT-B-32", pretrained="laion2b_s34b_b79k", image_size=224, ablations=True,
        n_finetune=20000, n_eval=5000, finetune_epochs=5, finetune_lr=1e-5, batch_size=128, poison_rate=0.01,
        n_defense=10000, defense_epochs=5, defense_lr=1e-5, defense_batch_size=64, defense_warmup_steps=50,
        sup_width=64, sup_epochs=30, sup_batch_size=128, sup_lr=0.01, sup_augment=True,
        n_sup_train=45000, n_sup_heldout=5000, cifar10_folder="$CLIPDEF_DATA/cifar-10-batches-bin",
        sup_target="airplane", warmup_steps=50, templates="openai", eval_batch_size=256, num_workers=2, threads=0,
        pretrain_threads=0,
        cgd=CGDSettings(), badclip=BadCLIPSettings(steps=1000), finetune_csv="$CLIPDEF_DATA/cc3m/train_small.csv",
        eval_folder="$CLIPDEF_DATA/imagenet/val",
    ),
    "paper": Profile(
        name="paper",
        description="GPU machines: RN50 CLIP with OpenAI weights, 500K CC3M pairs with 1,500 poisoned "
                    "(BadCLIP/CleanerCLIP protocol), ImageNet-1K val zero-shot, target 'banana'.",
        device="cuda", model="RN50", pretrained="openai", image_size=224, data="files", ablations=True,
        n_finetune=500000, n_eval=50000, finetune_epochs=10, finetune_lr=1e-6, batch_size=128, poison_rate=0.003,
        n_defense=100000, defense_epochs=10, defense_lr=1e-5, defense_batch_size=64, defense_warmup_steps=50,
        sup_width=64, sup_epochs=100, sup_lr=0.01, sup_batch_size=128, sup_augment=True, n_sup_train=45000,
        n_sup_heldout=5000, cifar10_folder="$CLIPDEF_DATA/cifar-10-batches-bin", sup_target="airplane",
        warmup_steps=10000, templates="openai", eval_batch_size=256, num_workers=8, threads=0,
        pretrain_threads=0, cgd=CGDSettings(),
        badclip=BadCLIPSettings(),   # BadCLIP's README: 50 epochs of 156 full batches of 64 over its 10,000 images
        finetune_csv="$CLIPDEF_DATA/cc3m/train500k.csv", eval_folder="$CLIPDEF_DATA/imagenet/val",
        class_names_file="$CLIPDEF_DATA/imagenet/classnames.txt",
    ),
}


def names() -> list[str]:
    return list(PROFILES)


def parameter_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Profile) if f.name not in ("name", "description")]


def _merged(current, value):
    """A settings field's new value: a mapping changes some of its settings, anything else replaces it."""
    if isinstance(current, Settings) and isinstance(value, dict):
        return current.replace(**value)
    return value


def check_overrides(overrides: dict) -> None:
    unknown = sorted(set(overrides) - set(parameter_names()))
    if unknown:
        raise TypeError(f"unknown profile parameter(s) {unknown}; valid ones: {', '.join(parameter_names())}")


def from_file(path: str | os.PathLike) -> Profile:
    """A profile of your own, from a YAML file: ``base:`` one of the named profiles, then any profile fields::

        base: paper                                   # start from this profile …
        finetune_csv: /data/cc3m/my_subset.csv        # … and change these fields
        pretrained: /models/RN50-openai.pt

    Its name is the file's stem (it labels results rows)."""
    import yaml

    path = Path(path).expanduser()
    spec = yaml.safe_load(path.read_text()) or {}
    if not isinstance(spec, dict) or spec.get("base") not in PROFILES:
        raise ValueError(f"{path} must be a mapping with 'base: <one of {', '.join(PROFILES)}>' and profile fields")
    fields = {k: v for k, v in spec.items() if k != "base"}
    base = PROFILES[spec["base"]]
    return dataclasses.replace(base.replace(**fields), name=path.stem,
                               description=f"{base.name} with the fields of {path}")


def is_profile_file(name: str) -> bool:
    return str(name).endswith((".yaml", ".yml"))


def resolve(profile: str | None = None, **overrides) -> Profile:
    """The profile to run with: ``profile`` (papermill) > ``$CLIPDEF_PROFILE`` > ``"tiny"``, with overrides.

    ``profile`` is a profile's name or the path of a YAML file (:func:`from_file`). Overrides whose value is None
    are ignored, so a notebook can pass its parameters through unchanged."""
    name = profile or os.environ.get("CLIPDEF_PROFILE") or "tiny"
    if is_profile_file(name):
        if not Path(name).expanduser().exists():
            raise FileNotFoundError(f"profile file {name} does not exist (a profile is one of "
                                    f"{', '.join(PROFILES)} or the path of a YAML file)")
        base = from_file(name)
    elif name in PROFILES:
        base = PROFILES[name]
    else:
        raise ValueError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILES)}, or the path of a YAML "
                         "file that starts from one of them (base: paper)")
    return base.replace(**{k: v for k, v in overrides.items() if v is not None})
