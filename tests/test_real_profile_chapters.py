"""The chapters on a real-data profile, end to end: a profile of one's own (a YAML file based on `paper`) pointing at
small data this test writes in the real formats — a CC3M-style CSV of images and captions, an ImageNet-val style
class folder, CIFAR-10's binary batches — and at a local checkpoint file instead of a hub download."""

import json

import pytest
import yaml

from clipdef import cli, standin


@pytest.fixture(scope="module")
def real_profile(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    # CC3M-style pairs (the world's fine-tuning scenes as JPEG files with their captions), ImageNet-val style class
    # folders with readable names, CIFAR-10's binary batches and a local checkpoint: clipdef.standin writes them
    csv = standin.write_cc3m_csv(root / "cc3m", standin.scenes("finetune", 160, 32))
    val, names = standin.write_imagenet_val(root / "imagenet", standin.scenes("eval", 60, 32))
    cifar = standin.write_cifar10_binary(root / "cifar", standin.random_cifar(200), standin.random_cifar(40, seed=1))
    weights = standin.random_weights("clipdef-tiny", root / "clip.safetensors")  # loaded without pickle
    profile = {"base": "paper", "model": "clipdef-tiny", "pretrained": str(weights), "image_size": 32,
               "device": "cpu", "finetune_csv": str(csv), "eval_folder": str(val), "class_names_file": str(names),
               "cifar10_folder": str(cifar), "n_finetune": 96, "n_defense": 48, "n_eval": 60,
               "finetune_epochs": 1, "defense_epochs": 1, "batch_size": 32, "warmup_steps": 2, "badclip": {"steps": 3},
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
                     "weak_guide": "clipdef-tiny/", "ablations": True},   # the weaker guide: open_clip's loader
}


@pytest.mark.notebook
@pytest.mark.parametrize("chapter", list(CHAPTERS))
def test_chapter_runs_on_real_formats(chapter, real_profile, tmp_path, private_cache):
    params = {"profile": str(real_profile), **CHAPTERS[chapter]}
    out = cli.run_notebook(cli.REPO_NOTEBOOKS / chapter, params, out_dir=tmp_path, timeout=900, progress=False)
    executed = json.loads(out.read_text())
    assert not [o for c in executed["cells"] if c["cell_type"] == "code" for o in c["outputs"]
                if o.get("output_type") == "error"]
    rows = [json.loads(line) for f in (private_cache / "results").glob(f"{chapter[:-6]}__tiny-real__seed0.jsonl")
            for line in f.read_text().splitlines()]
    assert rows and {r["profile"] for r in rows} == {"tiny-real"}
