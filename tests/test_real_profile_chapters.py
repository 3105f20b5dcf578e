"""The chapters on a real-data profile, end to end: a profile of one's own (a YAML file based on `paper`) pointing at
small data this test writes in the real formats — a CC3M-style CSV of images and captions, an ImageNet-val style
class folder, CIFAR-10's binary batches — and at a local checkpoint file instead of a hub download."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from clipdef import cli, world
from clipdef.models import create_clip, save_checkpoint


@pytest.fixture(scope="module")
def real_profile(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    # CC3M-style pairs: the world's fine-tuning scenes as PNG files with their captions
    pairs = world.make_split("finetune", 160, seed=0, image_size=32)
    (root / "cc3m").mkdir()
    rows = ["filepath,caption"]
    for i, (image, caption) in enumerate(zip(pairs.images, pairs.captions)):
        Image.fromarray(image).save(root / "cc3m" / f"{i}.png")
        rows.append(f"{i}.png,{caption}")
    (root / "cc3m" / "train.csv").write_text("\n".join(rows) + "\n")
    # ImageNet-val style: one folder per class (sorted folder names), readable names in a file
    evaluation = world.make_split("eval", 60, seed=0, image_size=32)
    for i, (image, label) in enumerate(zip(evaluation.images, evaluation.labels)):
        folder = root / "imagenet" / "val" / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    (root / "imagenet" / "classnames.txt").write_text("\n".join(world.CLASSES) + "\n")
    # CIFAR-10 binaries: 1 label byte + 3,072 pixel bytes per record, five training batches and a test batch
    rng = np.random.default_rng(0)
    (root / "cifar").mkdir()
    for name, n in [(f"data_batch_{i}.bin", 40) for i in range(1, 6)] + [("test_batch.bin", 40)]:
        labels = np.arange(n, dtype=np.uint8) % 10
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        (root / "cifar" / name).write_bytes(np.concatenate([labels[:, None], pixels], 1).tobytes())
    # A local checkpoint instead of a pretrained tag (loaded without pickle)
    weights = save_checkpoint(create_clip("clipdef-tiny", None, seed=0).model, root / "clip.safetensors")
    profile = {"base": "paper", "model": "clipdef-tiny", "pretrained": str(weights), "image_size": 32,
               "device": "cpu", "finetune_csv": str(root / "cc3m" / "train.csv"),
               "eval_folder": str(root / "imagenet" / "val"),
               "class_names_file": str(root / "imagenet" / "classnames.txt"),
               "cifar10_folder": str(root / "cifar"), "n_finetune": 96, "n_defense": 48, "n_eval": 60,
               "finetune_epochs": 1, "defense_epochs": 1, "batch_size": 32, "warmup_steps": 2, "badclip_steps": 3,
               "n_sup_train": 120, "n_sup_heldout": 40, "sup_width": 4, "sup_epochs": 1, "sup_batch_size": 32,
               "eval_batch_size": 64, "num_workers": 0, "workers": 1, "templates": "world", "finetune_lr": 1e-4,
               "poison_rate": 0.1, "threads": 1}
    path = root / "tiny-real.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


CHAPTERS = {
    "02_attacks.ipynb": {"clip_attacks": "badnet,badclip", "sweep_attacks": "badnet", "sweep_rates": "0.1"},
    "03_detection.ipynb": {"clip_attacks": "badnet", "study_rates": "0.3", "methods": "kdist,slof,dao,iforest",
                           "draws": 2, "proportions": "0,0.01", "ks": "8,16", "scoring_batch": 64},
    "04_cleanclip_vs_cleanerclip.ipynb": {"clip_attacks": "badnet", "ablation_attack": "badnet",
                                          "samples_per_epoch": 16, "ablation_samples": "8", "ablation_taus": "1.0/0.3"},
    "05_cgd.ipynb": {"supervised_attacks": "badnet", "steps_attacks": "badnet", "unlearn_epochs": 1,
                     "weak_guide": "clipdef-tiny/", "ablations": False},
}


@pytest.mark.notebook
@pytest.mark.parametrize("chapter", list(CHAPTERS))
def test_chapter_runs_on_real_formats(chapter, real_profile, tmp_path, private_cache):
    params = {"profile": str(real_profile), **CHAPTERS[chapter]}
    if chapter == "05_cgd.ipynb":
        params["poison_rate"] = 0.1
    out = cli.run_notebook(cli.REPO_NOTEBOOKS / chapter, params, out_dir=tmp_path, timeout=900, progress=False)
    executed = json.loads(out.read_text())
    assert not [o for c in executed["cells"] if c["cell_type"] == "code" for o in c["outputs"]
                if o.get("output_type") == "error"]
    rows = [json.loads(line) for f in (private_cache / "results").glob(f"{chapter[:-6]}__tiny-real__seed0.jsonl")
            for line in f.read_text().splitlines()]
    assert rows and {r["profile"] for r in rows} == {"tiny-real"}
