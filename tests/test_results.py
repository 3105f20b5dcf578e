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


def _batch(tmp_path, profile="tiny"):
    rows = []
    for seed, asr in enumerate((0.2, 0.4)):
        rows += results.rows(profile, "04_x", {"asr_top1": asr, "steps": 10}, attack="sig", defense="d[s]", seed=seed)
        rows += results.rows(profile, "05_y", {"asr_top1": 1.0}, attack="sig", seed=seed)
        results.save_run([r for r in rows if r["seed"] == seed], folder=tmp_path)
    return tmp_path


def test_published_reads_one_chapter_of_one_profile_and_nothing_where_none_is(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPDEF_BATCH", str(_batch(tmp_path)))
    rows = results.published("tiny", "04_x")
    assert set(rows.notebook) == {"04_x"} and sorted(rows.seed.unique()) == [0, 1] and len(rows) == 4
    assert results.published("paper", "04_x").empty
    monkeypatch.setenv("CLIPDEF_BATCH", str(tmp_path / "missing"))
    assert results.published("tiny", "04_x").empty


def test_by_metric_averages_over_seeds_and_counts_them(tmp_path):
    rows = results.load(_batch(tmp_path))
    by = results.by_metric(rows[rows.notebook == "04_x"], ["attack", "defense"])
    assert by.loc[("sig", "d[s]"), "asr_top1"] == pytest.approx(0.3) and by.loc[("sig", "d[s]"), "seeds"] == 2
    assert by.loc[("sig", "d[s]"), "steps"] == 10
    assert results.by_metric(rows.iloc[:0], ["attack"]).empty
    none = results.by_metric(rows.iloc[:0], ["attack", "defense", "seed"])
    assert none.empty and list(none.index.names) == ["attack", "defense", "seed"]


def test_a_section_shows_this_runs_rows_when_it_ran_else_the_batchs(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from clipdef import nb

    monkeypatch.setenv("CLIPDEF_BATCH", str(_batch(tmp_path)))
    rec = results.Recorder(SimpleNamespace(name="tiny", seed=7), "04_x")
    rec.add({"asr_top1": 0.9}, attack="sig", defense="d[s]")
    ran = nb.section_rows(rec, True, defense="d[s]")
    assert ran.value.tolist() == [0.9] and nb.measured_by(ran, True) == "this run"
    batch = nb.section_rows(rec, False, defense="d[s]", metric=["asr_top1"])
    assert sorted(batch.value) == [0.2, 0.4] and "seeds 0, 1" in nb.measured_by(batch, False)
    none = nb.section_rows(rec, False, defense="other")
    assert none.empty and "ablations=False" in nb.measured_by(none, False)
