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


def test_unknown_parameter_fails_with_valid_list(tmp_path):
    with pytest.raises(SystemExit, match=r"unknown parameter\(s\) \['epochs'\].*valid parameters: .*seed"):
        cli.main(["run", str(NB), "-p", "epochs", "3", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())


def test_unknown_profile_fails_with_valid_list(tmp_path):
    with pytest.raises(SystemExit, match="valid profiles: tiny, smoke, colab, paper"):
        cli.main(["run", str(NB), "-p", "profile", "huge", "--out", str(tmp_path)])


def test_missing_notebook(tmp_path):
    with pytest.raises(SystemExit, match="does not exist; chapters: 00_world_and_clip.ipynb"):
        cli.main(["run", str(tmp_path / "nope.ipynb")])


def test_output_name_depends_on_parameters():
    a = cli.output_name(NB, {"seed": 1})
    assert a.startswith("00_world_and_clip__") and a != cli.output_name(NB, {"seed": 2})
    assert a == cli.output_name(NB, {"seed": 1})


def test_list(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "00_world_and_clip.ipynb: profile, seed" in out and "tiny (" in out
