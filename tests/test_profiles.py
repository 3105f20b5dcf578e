import pytest

from clipdef import profiles


def test_default_is_tiny_and_env_overrides(monkeypatch):
    assert profiles.resolve().name == "tiny"
    monkeypatch.setenv("CLIPDEF_PROFILE", "paper")
    assert profiles.resolve().name == "paper"
    assert profiles.resolve("tiny").name == "tiny"  # papermill parameter beats the environment


def test_overrides_and_none_passthrough():
    cfg = profiles.resolve("tiny", seed=3, n_eval=None)
    assert cfg.seed == 3 and cfg.n_eval == profiles.PROFILES["tiny"].n_eval


def test_unknown_profile_lists_valid_ones():
    with pytest.raises(ValueError, match="valid profiles: tiny, smoke, colab, paper"):
        profiles.resolve("huge")


def test_unknown_parameter_lists_valid_ones():
    with pytest.raises(TypeError, match=r"unknown profile parameter\(s\) \['epochz'\]; valid ones: .*seed"):
        profiles.resolve("tiny", epochz=3)


def test_tiny_needs_nothing():
    assert profiles.resolve("tiny").missing() == []


def test_paper_profile_names_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPDEF_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        profiles.resolve("paper").check()
    msg = str(err.value)
    assert "finetune_csv" in msg and str(tmp_path / "cc3m" / "train500k.csv") in msg and "img2dataset" in msg
    assert "eval_folder" in msg and "one sub-folder per class" in msg


def test_paper_profile_ready_when_data_exists(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPDEF_DATA", str(tmp_path))
    (tmp_path / "cc3m").mkdir()
    (tmp_path / "cc3m" / "train500k.csv").write_text("filepath,caption\n")
    (tmp_path / "imagenet" / "val").mkdir(parents=True)
    assert profiles.resolve("paper").missing() == []


def test_missing_local_weights_named():
    cfg = profiles.resolve("tiny", pretrained="/nowhere/model.safetensors")
    with pytest.raises(FileNotFoundError, match="weights file /nowhere/model.safetensors does not exist"):
        cfg.check()


def test_every_profile_is_documented():
    for p in profiles.PROFILES.values():
        assert len(p.description) > 30
        assert p.as_dict()["name"] == p.name


def test_a_profile_of_your_own_from_a_yaml_file(tmp_path):
    path = tmp_path / "my-cluster.yaml"
    path.write_text("base: paper\nfinetune_csv: /data/cc3m/subset.csv\nn_finetune: 1000\n")
    cfg = profiles.resolve(str(path), seed=2)
    assert cfg.name == "my-cluster" and cfg.model == "RN50" and cfg.n_finetune == 1000 and cfg.seed == 2
    assert cfg.finetune_csv == "/data/cc3m/subset.csv" and "paper" in cfg.description
    (tmp_path / "bad.yaml").write_text("base: huge\n")
    with pytest.raises(ValueError, match="'base: <one of tiny, smoke, colab, paper>'"):
        profiles.resolve(str(tmp_path / "bad.yaml"))
    (tmp_path / "typo.yaml").write_text("base: tiny\nepochz: 3\n")
    with pytest.raises(TypeError, match=r"unknown profile parameter\(s\) \['epochz'\]"):
        profiles.resolve(str(tmp_path / "typo.yaml"))
    with pytest.raises(FileNotFoundError, match="profile file .*nowhere.yaml does not exist"):
        profiles.resolve(str(tmp_path / "nowhere.yaml"))
