import os
import re
from pathlib import Path

import pytest

from clipdef import cli

NB = cli.REPO_NOTEBOOKS / "00_world_and_clip.ipynb"


@pytest.mark.parametrize("text,value", [("1", 1), ("0.5", 0.5), ("1e-3", 1e-3), ("true", True),
                                        ("None", None), ("tiny", "tiny")])
def test_parse_value(text, value):
    assert cli.parse_value(text) == value


def test_notebook_parameters_are_read():
    params = cli.notebook_parameters(NB)
    assert {"profile", "seed", "device"} <= set(params)


def test_unknown_parameter_fails_with_valid_list(tmp_path, capsys):
    assert cli.main(["run", str(NB), "-p", "epochs", "3", "--out", str(tmp_path)]) == 2
    assert re.search(r"^error: unknown parameter\(s\) \['epochs'\].*valid parameters: .*seed", capsys.readouterr().err)
    assert not list(tmp_path.iterdir())


def test_unknown_profile_fails_with_valid_list(tmp_path, capsys):
    assert cli.main(["run", str(NB), "-p", "profile", "huge", "--out", str(tmp_path)]) == 2
    assert "valid profiles: tiny, smoke, colab, paper" in capsys.readouterr().err


def test_missing_notebook(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "nope.ipynb")]) == 2
    assert "does not exist; chapters: 00_world_and_clip.ipynb" in capsys.readouterr().err


@pytest.mark.parametrize("name, value, message", [
    ("poison_rate", "2", r"poison_rate must lie in \[0, 1\] \(a share, e.g. 0.03 for 3 %\), got 2"),
    ("seed", "one", r"parameter seed of 02_attacks.ipynb takes int values \(default 0\), got 'one'"),
    ("seed", "1.5", r"takes int values"),
    ("device", "gpu", r"device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
])
def test_bad_values_are_refused_before_the_kernel_starts(tmp_path, capsys, monkeypatch, name, value, message):
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("a kernel was started"))
    chapter = cli.REPO_NOTEBOOKS / "02_attacks.ipynb"
    assert cli.main(["run", str(chapter), "-p", name, value, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err and len(err.splitlines()) == 1


@pytest.mark.notebook
def test_an_error_in_a_chapter_ends_in_its_message_and_cell_with_status_2(tmp_path):
    """The chapter's own error, the cell it came from, exit status 2 — not the command's traceback."""
    import json
    import subprocess
    import sys

    fixture = Path(__file__).parent / "fixtures" / "quick_chapter.ipynb"
    nb = json.loads(fixture.read_text())
    nb["cells"].append({"cell_type": "code", "execution_count": None, "id": "boom", "metadata": {}, "outputs": [],
                        "source": ["if value > 1:\n", "    raise ValueError(f'value must be at most 1, got {value}')"]})
    chapter = tmp_path / "chapter.ipynb"
    chapter.write_text(json.dumps(nb))
    run = subprocess.run([sys.executable, "-m", "clipdef", "run", str(chapter), "-p", "value", "2",
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CLIPDEF_RESULTS": str(tmp_path / "results")})
    assert run.returncode == 2, run.stderr[-2000:]
    assert "error: chapter.ipynb stopped in cell 4 of 4 (if value > 1: …):" in run.stderr
    assert "ValueError: value must be at most 1, got 2" in run.stderr
    assert "Traceback" not in run.stderr and not list((tmp_path / "out").glob("*.ipynb"))


def test_output_name_depends_on_parameters():
    a = cli.output_name(NB, {"seed": 1})
    assert a.startswith("00_world_and_clip__") and a != cli.output_name(NB, {"seed": 2})
    assert a == cli.output_name(NB, {"seed": 1})


def test_list(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "00_world_and_clip.ipynb: profile, seed" in out and "tiny (" in out
