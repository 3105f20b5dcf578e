import pytest

from clipdef import results


def test_rows_round_trip(tmp_path):
    rows = results.rows("tiny", "00_world_and_clip", {"ca_top1": 0.5, "ca_top5": 0.9}, seed=2, poison_rate=0.01)
    path = results.save_run(rows, folder=tmp_path)
    assert path.name == "00_world_and_clip__tiny__seed2.jsonl"
    frame = results.load(tmp_path)
    assert list(frame["metric"]) == ["ca_top1", "ca_top5"] and list(frame["value"]) == [0.5, 0.9]
    assert set(results.COLUMNS) <= set(frame.columns) and (frame["poison_rate"] == 0.01).all()


def test_rerun_replaces_not_duplicates(tmp_path):
    results.save_run(results.rows("tiny", "nb", {"m": 1.0}), folder=tmp_path)
    results.save_run(results.rows("tiny", "nb", {"m": 2.0}), folder=tmp_path)
    frame = results.load(tmp_path)
    assert len(frame) == 1 and frame["value"].item() == 2.0


def test_nan_metric_is_an_error():
    with pytest.raises(ValueError, match="NaN"):
        results.rows("tiny", "nb", {"asr_top1": float("nan")})


def test_empty_folder_gives_empty_frame(tmp_path):
    frame = results.load(tmp_path)
    assert len(frame) == 0 and list(frame.columns) == list(results.COLUMNS)


def test_a_killed_writers_leftover_is_not_read(tmp_path):
    results.save_run(results.rows("tiny", "nb", {"m": 1.0}), folder=tmp_path)
    (tmp_path / ".tmp-x1y2-nb__tiny__seed0.jsonl").write_text('{"profile": "tiny", "value": 9')  # cut short
    frame = results.load(tmp_path)
    assert len(frame) == 1 and frame["value"].item() == 1.0


def test_a_measurement_written_twice_is_refused(tmp_path):
    once = results.rows("tiny", "02_attacks", {"asr_top1": 0.7}, attack="badnet", poison_rate=0.03)
    other_rate = results.rows("tiny", "02_attacks", {"asr_top1": 0.4}, attack="badnet", poison_rate=0.01)
    results.save_run(once + other_rate, folder=tmp_path)  # an extra column tells them apart
    with pytest.raises(ValueError, match="written twice"):
        results.save_run(once + other_rate + once, folder=tmp_path)
    assert len(results.load(tmp_path)) == 2  # the refused run replaced nothing
