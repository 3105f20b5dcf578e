"""Smoke runs: every chapter executes top to bottom in a fresh kernel on the `smoke` profile (minimal sizes)."""

import json

import nbformat
import pytest
import yaml

import clipdef
from clipdef import cli

BOOK_REPOSITORY = yaml.safe_load((cli.REPO_NOTEBOOKS.parent / "_config.yml").read_text())["repository"]["url"]

CHAPTERS = cli.chapter_names()
# Chapters that read results or settings and write no rows of their own
WRITE_NO_RESULTS = ("06_report.ipynb", "07_recipes.ipynb")
# Minimal settings per chapter on top of the smoke profile: a representative subset of attacks and ablations.
# The smoke profile skips the ablations (as tiny does, showing the published batch's: none for smoke); chapters 2
# and 4 run theirs, so both paths run.
SMOKE_PARAMS = {
    "02_attacks.ipynb": {"clip_attacks": "badnet,badclip", "sweep_attacks": "badnet", "sweep_rates": "0.03",
                         "ablations": True},
    "03_detection.ipynb": {"clip_attacks": "badnet,badclip", "study_rates": "0.3", "draws": 2, "sweep_draws": 1,
                           "proportions": "0,0.01", "ks": "8,16", "ablations": True},
    "04_cleanclip_vs_cleanerclip.ipynb": {"clip_attacks": "badnet,badclip", "samples_per_epoch": 64,
                                          "ablation_samples": "16", "ablation_taus": "1.0/0.3", "ablations": True},
    "05_cgd.ipynb": {"supervised_attacks": "badnet", "steps_attacks": "badnet", "unlearn_epochs": 1,
                     "weak_guide_epochs": 1, "guide_snapshots": "1", "ablations": False},
}


def test_chapters_exist():
    assert CHAPTERS[:2] == ["00_world_and_clip.ipynb", "01_threat_model.ipynb"]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_committed_without_outputs_and_with_the_standard_opening(chapter):
    nbformat.validate(nbformat.read(cli.REPO_NOTEBOOKS / chapter, as_version=4))   # e.g. tags must be a list
    nb = json.loads((cli.REPO_NOTEBOOKS / chapter).read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{chapter} has outputs"
    first, colab, params, setup = nb["cells"][:4]
    assert first["cell_type"] == "markdown" and "What you will learn" in "".join(first["source"])
    assert "remove-cell" in colab["metadata"].get("tags", []) and "google.colab" in "".join(colab["source"])
    # Colab installs this release from the book's repository (_config.yml is where the repository is named)
    assert f"clipdef @ git+{BOOK_REPOSITORY}@v{clipdef.__version__}" in "".join(colab["source"])
    assert "parameters" in params["metadata"].get("tags", [])
    assert 'profile = "tiny"' in "".join(params["source"])
    assert "nb.setup(profile" in "".join(setup["source"])
    # ... and the same closing: "Summary" and "Exercises", followed only by the solutions (tests/test_student.py)
    body = [c for c in nb["cells"] if "solution" not in c["metadata"].get("tags", [])]
    closing = "".join(body[-1]["source"])
    assert nb["cells"][:len(body)] == body and body[-1]["cell_type"] == "markdown"
    assert 0 <= closing.find("## Summary") < closing.find("## Exercises"), f"{chapter} lacks Summary + Exercises"


@pytest.mark.notebook
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_runs_on_smoke_profile(chapter, tmp_path, private_cache):
    params = {"profile": "smoke", **SMOKE_PARAMS.get(chapter, {})}
    out = cli.run_notebook(cli.REPO_NOTEBOOKS / chapter, params, out_dir=tmp_path,
                           timeout=900, progress=False)
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c["outputs"]
              if o.get("output_type") == "error"]
    assert not errors
    if chapter not in WRITE_NO_RESULTS:  # every other chapter writes its own results rows
        assert list((private_cache / "results").glob(f"{chapter[:-6]}__smoke__seed0.jsonl"))
