"""Smoke runs: every chapter executes top to bottom in a fresh kernel on the `smoke` profile (minimal sizes)."""

import json

import pytest

from clipdef import cli

CHAPTERS = cli.chapter_names()


def test_chapters_exist():
    assert CHAPTERS[:2] == ["00_world_and_clip.ipynb", "01_threat_model.ipynb"]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_committed_without_outputs_and_with_the_standard_opening(chapter):
    nb = json.loads((cli.REPO_NOTEBOOKS / chapter).read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{chapter} has outputs"
    first, colab, params, setup = nb["cells"][:4]
    assert first["cell_type"] == "markdown" and "What you will learn" in "".join(first["source"])
    assert "remove-cell" in colab["metadata"].get("tags", []) and "google.colab" in "".join(colab["source"])
    assert "parameters" in params["metadata"].get("tags", [])
    assert 'profile = "tiny"' in "".join(params["source"])
    assert "profiles.resolve(profile" in "".join(setup["source"])


@pytest.mark.notebook
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_runs_on_smoke_profile(chapter, tmp_path, private_cache):
    out = cli.run_notebook(cli.REPO_NOTEBOOKS / chapter, {"profile": "smoke"}, out_dir=tmp_path,
                           timeout=900, progress=False)
    executed = json.loads(out.read_text())
    errors = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c["outputs"]
              if o.get("output_type") == "error"]
    assert not errors
    assert list((private_cache / "results").glob(f"{chapter[:-6]}__smoke__seed0.jsonl"))
