"""The real path, checked and measured: the ``paper`` and ``colab`` profiles' stages (and chapters 2 and 3) on stand-in
data in the real formats, with random weights of the real architectures, recording throughput and peak GPU memory.

    bash scripts/gpu_check.sh                 # on a GPU: 224 px, RN50 (paper, webdataset shards) and ViT-B-32 (colab,
                                              # a CSV of JPEGs), stages then chapters 2 and 3; under 8 minutes
    bash scripts/gpu_check.sh --tiny          # on a CPU: 32 px, the tiny CLIP, a few hundred samples; under a minute

What it writes (:mod:`clipdef.standin`): CC3M-style pairs (the world's scenes as JPEGs with captions, as a CSV and as
img2dataset's webdataset shards), an ImageNet-val style class folder with its names file, CIFAR-10's binary batches,
and a checkpoint of random weights per architecture, passed as ``pretrained=<path>`` (nothing is downloaded). Each
profile then runs from a profile file of its own (``base: paper`` / ``base: colab`` with the stand-ins' paths and
smaller sizes) in a fresh cache, stage by stage in this process: BadCLIP's patch, poisoned fine-tuning, zero-shot
evaluation, detection's embeddings and scores, a CleanCLIP defense, a supervised victim and CGD.

Every measurement is one row of ``benchmarks/results/gpu_check.csv`` (``--out``): the stage, what it processed
(pairs, images, embeddings, steps), seconds, throughput, peak GPU memory (``torch.cuda.max_memory_allocated``, reset
before each stage; empty on a CPU), the device and the machine.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "gpu_check.csv"
FIELDS = ["date", "machine", "device", "size", "profile", "model", "image_size", "data", "stage", "items", "unit",
          "seconds", "throughput", "peak_gpu_mb", "note"]
BUDGET_S = 8 * 60          # the whole check on one GPU
PROFILES = ("paper", "colab")
DATA_FORMAT = {"paper": "shards", "colab": "csv"}   # each real-data reader once

# Stand-in sizes: "full" fills a GPU's minutes at 224 px with the real architectures; "tiny" runs on a CPU
SIZES = {
    "full": {"side": 224, "pairs": 8192, "defense": 2048, "eval": 1000, "sup_train": 8000, "sup_heldout": 1000,
             "sup_test": 1000, "per_shard": 1024, "models": {"paper": "RN50", "colab": "ViT-B-32"}},
    "tiny": {"side": 32, "pairs": 256, "defense": 64, "eval": 60, "sup_train": 200, "sup_heldout": 50,
             "sup_test": 50, "per_shard": 64, "models": {"paper": "clipdef-tiny", "colab": "clipdef-tiny"}},
}
# Fewer epochs than the profiles': a check of the path and its speed, not an experiment
SHORT = {"finetune_epochs": 1, "defense_epochs": 1, "badclip": {"steps": 20}, "sup_epochs": 2, "workers": 1,
         "cgd": {"unlearn_epochs": 2}}
TINY = {"device": "cpu", "batch_size": 32, "defense_batch_size": 32, "eval_batch_size": 64, "warmup_steps": 2,
        "defense_warmup_steps": 2, "badclip": {"steps": 3}, "templates": "world", "sup_width": 4, "sup_batch_size": 32,
        "sup_epochs": 1, "num_workers": 0, "threads": 1,
        "cgd": {"suspicious_runs": 1, "suspicious_epochs": 1, "unlearn_epochs": 1, "unlearn_batch_size": 32}}
CHAPTERS = {  # chapters 2 and 3 on the stages the check trained (one attack, its rate: nothing new to train)
    "02_attacks.ipynb": lambda rate: {"clip_attacks": "badnet", "sweep_attacks": "badnet", "sweep_rates": str(rate)},
    "03_detection.ipynb": lambda rate: {"clip_attacks": "badnet", "study_rates": str(rate),
                                        "methods": "kdist,slof,dao"},
}


def write_standins(root: Path, size: dict, workers: int) -> dict:
    """The stand-in data sets and weights files; returns their paths."""
    from clipdef import standin

    t0 = time.perf_counter()
    pairs = standin.scenes("finetune", size["pairs"] + size["defense"], size["side"], workers=workers)
    paths = {"csv": standin.write_cc3m_csv(root / "cc3m-csv", pairs),
             "shards": standin.write_cc3m_shards(root / "cc3m-shards", pairs, per_shard=size["per_shard"])}
    paths["eval"], paths["names"] = standin.write_imagenet_val(root / "imagenet",
                                                               standin.scenes("eval", size["eval"], size["side"]))
    train = standin.world_cifar(size["sup_train"] + size["sup_heldout"], workers=workers)
    paths["cifar"] = standin.write_cifar10_binary(root / "cifar", train, standin.world_cifar(size["sup_test"], seed=1))
    for model in set(size["models"].values()):
        paths[model] = standin.random_weights(model, root / f"{model}-random.safetensors")
    print(f"stand-in data and weights written in {time.perf_counter() - t0:.1f} s under {root}", flush=True)
    return paths


def profile_file(root: Path, name: str, size_name: str, paths: dict) -> Path:
    """A profile of the check's own: the named profile with the stand-ins' paths and the check's sizes."""
    import yaml

    size = SIZES[size_name]
    model = size["models"][name]
    spec = {"base": name, "model": model, "pretrained": str(paths[model]), "image_size": size["side"],
            "data": "files", "eval_folder": str(paths["eval"]), "class_names_file": str(paths["names"]),
            "cifar10_folder": str(paths["cifar"]), "n_finetune": size["pairs"], "n_defense": size["defense"],
            "n_eval": size["eval"], "n_sup_train": size["sup_train"], "n_sup_heldout": size["sup_heldout"],
            **SHORT, **(TINY if size_name == "tiny" else {})}
    spec["cgd"] = {**SHORT["cgd"], **(TINY["cgd"] if size_name == "tiny" else {})}
    spec["finetune_shards" if DATA_FORMAT[name] == "shards" else "finetune_csv"] = str(paths[DATA_FORMAT[name]])
    path = root / f"gpu-check-{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


class Meter:
    """Times a stage and reads its peak GPU memory; each measurement becomes one results row."""

    def __init__(self, cfg, size_name: str):
        import torch

        self.cfg, self.size_name, self.rows = cfg, size_name, []
        from clipdef.env import pick_device

        self.cuda = str(pick_device(cfg.device)).startswith("cuda")
        self.device = torch.cuda.get_device_name(0) if self.cuda else "cpu"

    def __call__(self, stage: str, run, count=None, unit: str = "", note: str = ""):
        """Run ``run()``; ``count(result, seconds)`` → (items, seconds) of what it processed (None: the wall time)."""
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        result = run()
        if self.cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        items, seconds = count(result, wall) if count else (None, wall)
        peak = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None
        self.rows.append({"stage": stage, "items": items, "unit": unit, "seconds": round(seconds, 3),
                          "throughput": round(items / seconds, 1) if items and seconds > 0 else None,
                          "peak_gpu_mb": round(peak, 1) if peak is not None else None, "note": note})
        rate = f", {items / seconds:,.1f} {unit}/s" if items and seconds > 0 else ""
        memory = f", peak GPU {peak:,.0f} MB" if peak is not None else ""
        print(f"  {stage}: {seconds:.1f} s{rate}{memory}", flush=True)
        return result


def check_profile(path: Path, size_name: str, chapters: bool, out_dir: Path) -> list[dict]:
    """Every stage of one profile, measured; then chapters 2 and 3 on what the stages cached."""
    from clipdef import cli, detect, models, nb, profiles, stages

    cfg = nb.setup(str(path), device=profiles.resolve(str(path)).device)   # the profile's device, not "auto"
    rate = cfg.poison_rate
    print(f"{cfg.name}: {cfg.model} at {cfg.image_size} px on {cfg.device}, "
          f"{'shards' if cfg.finetune_shards else 'CSV'} of {cfg.n_finetune} pairs", flush=True)
    meter = Meter(cfg, size_name)
    meter("BadCLIP patch", lambda: stages.BadCLIPPatch().build(cfg, progress=False),
          lambda _, s: (cfg.badclip.steps, s), "steps")
    victim = meter("poisoned fine-tuning", lambda: stages.Backdoor("badnet", rate).build(cfg, progress=False),
                   lambda v, s: (len(v.history.steps) * min(cfg.batch_size, cfg.n_finetune), v.history.seconds),
                   "pairs", note="training loop alone (history.seconds)")
    evaluation = stages.evaluate_victim  # clean and triggered zero-shot passes over the evaluation folder
    meter("zero-shot evaluation", lambda: evaluation(cfg, victim.bundle, victim.trigger),
          lambda _, s: (2 * cfg.n_eval, s), "images", note="clean and triggered, with the classifier's prompts")
    pairs = victim.poisoned_set
    image = meter("detection embeddings", lambda: models.encode_images(
        victim.bundle, pairs, normalize=False, batch_size=cfg.eval_batch_size).numpy(),
        lambda e, s: (len(e), s), "embeddings", note="as chapter 3 runs it (no DataLoader workers)")
    if cfg.num_workers:
        meter(f"detection embeddings, {cfg.num_workers} workers", lambda: models.encode_images(
            victim.bundle, pairs, normalize=False, batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers),
            lambda e, s: (len(e), s), "embeddings", note="the profile's num_workers")
    text = meter("detection caption embeddings", lambda: models.encode_texts(
        victim.bundle, pairs.captions, normalize=False).numpy(), lambda e, s: (len(e), s), "embeddings")
    detect.score(image[:64], "dao", k=4)   # faiss's first call loads it: not the scoring's cost
    meter("detection scores (DAO, image+text)", lambda: detect.score(image, "dao", k=16, texts=text),
          lambda sc, s: (len(sc), s), "samples", note="CPU (faiss)")
    defended = meter("CleanCLIP defense", lambda: stages.Defend.of("badnet", "cleanclip", rate).build(
        cfg, progress=False), lambda d, s: (d.steps * min(cfg.defense_batch_size, cfg.n_defense), s), "pairs",
        note="with its per-epoch evaluation")
    del defended
    meter("supervised victim", lambda: stages.PoisonClassifier("badnet", cfg.sup_poison_rate).build(
        cfg, progress=False), lambda _, s: (cfg.sup_epochs * cfg.n_sup_train, s), "images")
    meter("CGD", lambda: stages.CGD("badnet", cfg.sup_poison_rate).build(cfg, progress=False),
          note="guide logits, suspicious models, split, unlearning")
    for chapter, params in CHAPTERS.items() if chapters else ():
        meter(f"chapter {chapter[:-6]}", lambda chapter=chapter, params=params: cli.run_notebook(
            cli.REPO_NOTEBOOKS / chapter, {"profile": str(path), **params(rate)}, out_dir=out_dir, timeout=600,
            progress=False), note="on the cached stages")
    base = {"profile": cfg.name, "model": cfg.model, "image_size": cfg.image_size, "device": meter.device,
            "data": "webdataset shards" if cfg.finetune_shards else "CSV of JPEGs", "size": size_name}
    return [{**base, **row} for row in meter.rows]


def record(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    stamp = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()} {os.cpu_count()} cores"}
    with open(out, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({**stamp, **row})


def parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU sizes: 32 px, the tiny CLIP, a few hundred samples")
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=PROFILES)
    parser.add_argument("--out", type=Path, default=RESULTS, help="the CSV the rows are appended to")
    parser.add_argument("--workdir", type=Path, default=None, help="where the stand-ins and caches go (default: "
                        "a temporary folder, removed afterwards)")
    chapters = parser.add_mutually_exclusive_group()
    chapters.add_argument("--chapters", dest="chapters", action="store_true", default=None,
                          help="also run chapters 2 and 3 (the default at full size)")
    chapters.add_argument("--no-chapters", dest="chapters", action="store_false")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    size_name = "tiny" if args.tiny else "full"
    chapters = (not args.tiny) if args.chapters is None else args.chapters
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; run it with --tiny on a CPU", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        os.environ["TQDM_DISABLE"] = "1"
        paths = write_standins(root / "data", SIZES[size_name], workers=min(16, os.cpu_count() or 1))
        rows = []
        for name in args.profiles:
            os.environ["CLIPDEF_CACHE"] = str(root / "cache" / name)   # a fresh cache: every stage trains
            rows += check_profile(profile_file(root, name, size_name, paths), size_name, chapters, root / "runs")
    total = time.perf_counter() - t0
    rows.append({"profile": "all", "stage": "whole check", "seconds": round(total, 1), "size": size_name,
                 "device": rows[0]["device"] if rows else "", "note": "stand-ins, every stage, the chapters"})
    record(rows, args.out)
    within = "within" if total <= BUDGET_S else "OVER"
    print(f"gpu_check: {len(rows)} rows appended to {args.out}; {total:.0f} s in all ({within} the "
          f"{BUDGET_S // 60}-minute budget)")
    return 0 if total <= BUDGET_S or args.tiny else 1


if __name__ == "__main__":
    sys.exit(main())
