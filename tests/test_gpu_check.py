"""scripts/gpu_check.sh, the GPU check of the real path, at its CPU size (--tiny): stand-ins in the real formats,
both real profiles' stages, one results row per measurement."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def run_check(*args, timeout=300):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=timeout)


def test_the_tiny_check_runs_every_stage_of_both_profiles_on_a_cpu(tmp_path):
    out = tmp_path / "gpu_check.csv"
    run = run_check("--tiny", "--out", str(out), "--workdir", str(tmp_path / "work"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    stages = {"BadCLIP patch", "poisoned fine-tuning", "zero-shot evaluation", "detection embeddings",
              "detection caption embeddings", "detection scores (DAO, image+text)", "CleanCLIP defense",
              "supervised victim", "CGD"}
    for profile, data in (("gpu-check-paper", "webdataset shards"), ("gpu-check-colab", "CSV of JPEGs")):
        mine = {r["stage"]: r for r in rows if r["profile"] == profile}
        assert set(mine) == stages, profile
        assert all(r["data"] == data and r["device"] == "cpu" and r["image_size"] == "32" for r in mine.values())
        assert float(mine["poisoned fine-tuning"]["throughput"]) > 0 and mine["poisoned fine-tuning"]["unit"] == "pairs"
        assert float(mine["detection embeddings"]["throughput"]) > 0
        assert mine["CGD"]["peak_gpu_mb"] == ""   # no GPU memory on a CPU
    assert rows[-1]["stage"] == "whole check" and float(rows[-1]["seconds"]) > 0
    assert "rows appended" in run.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the full check runs")
def test_the_full_check_needs_a_gpu(tmp_path):
    run = run_check("--out", str(tmp_path / "x.csv"), timeout=120)
    assert run.returncode == 2 and "no CUDA GPU here; run it with --tiny" in run.stderr
    assert not (tmp_path / "x.csv").exists()
