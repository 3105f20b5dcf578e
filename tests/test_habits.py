"""The project's standing habits: the code passes its lint settings, and notebooks with outputs are refused."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_code_and_the_chapters_pass_ruff():
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", str(REPO)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-1000:]


def test_notebooks_with_outputs_are_refused_and_can_be_stripped(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import check_notebooks
    finally:
        sys.path.pop(0)
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# t"]},
                    {"cell_type": "code", "execution_count": 3, "metadata": {}, "source": ["1 + 1"],
                     "outputs": [{"output_type": "execute_result", "data": {"text/plain": ["2"]}, "metadata": {},
                                  "execution_count": 3}]}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "chapter.ipynb"
    path.write_text(json.dumps(nb))
    assert check_notebooks.main([str(path)]) == 1
    assert check_notebooks.main(["--strip", str(path)]) == 0
    stripped = json.loads(path.read_text())
    assert stripped["cells"][1]["outputs"] == [] and stripped["cells"][1]["execution_count"] is None
    assert check_notebooks.main([str(path)]) == 0
    chapters = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert chapters and check_notebooks.main([str(p) for p in chapters]) == 0
