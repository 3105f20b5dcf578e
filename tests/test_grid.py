"""The grid runner and the report: resumable, no lost or duplicated result, mean ± CI over seeds."""

import json
from pathlib import Path

import pytest
import yaml

import clipdef
from clipdef import cli, report, results

FIXTURE = "tests/fixtures/quick_chapter.ipynb"


def write_spec(tmp_path, **extra):
    spec = {"notebook": FIXTURE, "grid": {"seed": [0, 1, 2], "value": [0.5, 1.0]}, **extra}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_expand_grid_and_bad_specs(tmp_path):
    runs = cli.expand_grid({"notebook": FIXTURE, "grid": {"seed": [0, 1], "value": [1, 2, 3]}, "fixed": {"sleep": 0}})
    assert len(runs) == 6 and all(p["sleep"] == 0 for _, p in runs)
    with pytest.raises(cli.CommandError, match=r"unknown parameter\(s\) \['epochs'\]"):
        cli.expand_grid({"notebook": FIXTURE, "grid": {"epochs": [1]}})
    with pytest.raises(cli.CommandError, match="non-empty list"):
        cli.expand_grid({"notebook": FIXTURE, "grid": {"seed": 3}})
    with pytest.raises(cli.CommandError, match="unknown grid spec keys"):
        cli.expand_grid({"notebook": FIXTURE, "grids": {}})


def test_a_notebook_entry_carries_its_own_parameters():
    spec = {"notebooks": [FIXTURE, {"notebook": FIXTURE, "parameters": {"value": 9, "sleep": 1}}],
            "grid": {"seed": [0, 1]}, "fixed": {"sleep": 0}}
    runs = cli.expand_grid(spec)
    assert [p for _, p in runs] == [{"sleep": 0, "seed": 0}, {"sleep": 0, "seed": 1},
                                    {"sleep": 1, "value": 9, "seed": 0}, {"sleep": 1, "value": 9, "seed": 1}]
    with pytest.raises(cli.CommandError, match="a notebook entry is a path or"):
        cli.expand_grid({"notebooks": [{"path": FIXTURE}], "grid": {"seed": [0]}})
    with pytest.raises(cli.CommandError, match="non-empty list"):
        cli.expand_grid({"notebooks": [{"notebook": FIXTURE, "grid": {"seed": 4}}], "grid": {"seed": [0]}})
    with pytest.raises(cli.CommandError, match=r"unknown parameter\(s\) \['epochs'\]"):
        cli.expand_grid({"notebooks": [{"notebook": FIXTURE, "parameters": {"epochs": 1}}]})


def test_a_notebook_entry_may_replace_a_list_of_the_grid():
    spec = {"notebooks": [FIXTURE, {"notebook": FIXTURE, "parameters": {"value": 9}, "grid": {"seed": [0, 1, 2]}}],
            "grid": {"seed": [0, 1], "sleep": [0]}}
    runs = [p for _, p in cli.expand_grid(spec)]
    assert runs == [{"seed": 0, "sleep": 0}, {"seed": 1, "sleep": 0},
                    {"value": 9, "seed": 0, "sleep": 0}, {"value": 9, "seed": 1, "sleep": 0},
                    {"value": 9, "seed": 2, "sleep": 0}]


@pytest.mark.notebook
def test_grid_runs_skips_finished_and_reports(tmp_path):
    spec = write_spec(tmp_path)
    out = tmp_path / "out"
    first = cli.run_grid(spec, out=out, parallel=2)
    assert first == {"total": 6, "skipped": 0, "ran": 6, "failed": 0}
    again = cli.run_grid(spec, out=out, parallel=2)
    assert again == {"total": 6, "skipped": 6, "ran": 0, "failed": 0}
    frame = results.load(out / "results")
    assert len(frame) == 6 and len(list((out / "results").glob("*.jsonl"))) == 6
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["runs"]) == 6 and {r["status"] for r in manifest["runs"].values()} == {"finished"}
    run = next(iter(manifest["runs"].values()))
    assert run["clipdef"] == clipdef.__version__ and run["seconds"] > 0 and "cores" in run["machine"]
    assert manifest["spec"]["grid"] == {"seed": [0, 1, 2], "value": [0.5, 1.0]}
    summary = report.summarise(frame, by=["notebook", "metric"])
    assert summary["n"].item() == 3  # n counts seeds: each seed's two settings of "value" are averaged first


@pytest.mark.notebook
def test_a_relative_out_folder_holds_the_results(tmp_path, monkeypatch):
    """Runs execute in their notebook's folder: a relative results path must not land there."""
    fixture = str(cli.REPO_NOTEBOOKS.parent / FIXTURE)
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump({"notebook": fixture, "grid": {"seed": [0]}, "out": "out"}))
    monkeypatch.chdir(tmp_path)
    assert cli.run_grid("grid.yaml")["ran"] == 1
    assert len(results.load(tmp_path / "out" / "results")) == 1
    assert not (cli.REPO_NOTEBOOKS.parent / "tests" / "fixtures" / "out").exists()


@pytest.mark.notebook
def test_a_grid_killed_mid_run_resumes_without_lost_or_duplicated_results(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    spec = write_spec(tmp_path, fixed={"sleep": 1.5})
    out = tmp_path / "out"
    grid = subprocess.Popen([sys.executable, "-m", "clipdef", "grid", str(spec), "--out", str(out), "--parallel", "1"],
                            cwd=cli.REPO_NOTEBOOKS.parent, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    def finished_runs():  # the executed notebooks; a ".tmp-…" file is a run still being written
        return {p.stem for p in (out / "notebooks").glob("*.ipynb") if not p.name.startswith(".")}

    deadline = time.time() + 120
    while len(finished_runs()) < 2 and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # well inside the third run (each sleeps 1.5 s after its kernel starts)
    os.killpg(grid.pid, signal.SIGKILL)  # the runner, its papermill child and the kernel, at once
    grid.wait()
    finished = finished_runs()
    assert 2 <= len(finished) < 6, finished
    resumed = cli.run_grid(spec, out=out, parallel=2)
    assert resumed["skipped"] == len(finished) and resumed["ran"] == 6 - len(finished) and resumed["failed"] == 0
    frame = results.load(out / "results")
    assert len(frame) == 6 and sorted(frame["value"].round(6)) == sorted(
        round(v * (1 + s / 100), 6) for s in (0, 1, 2) for v in (0.5, 1.0))  # each cell once, none lost
    assert len(finished_runs()) == 6


def test_summarise_ci_by_hand():
    import pandas as pd

    frame = pd.DataFrame({"profile": "tiny", "notebook": "nb", "attack": "a", "defense": "d", "metric": "m",
                          "seed": [0, 1, 2], "value": [0.1, 0.2, 0.3]})
    row = report.summarise(frame).iloc[0]
    # mean 0.2, sd 0.1, t_{0.975, 2} = 4.3027 → half-width 4.3027 · 0.1 / √3
    assert row["mean"] == pytest.approx(0.2) and row["ci95"] == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)
    # a seed with two rows of the same group (e.g. from an older results file) counts once, by its mean
    doubled = pd.concat([frame, frame.assign(value=[0.3, 0.2, 0.3])])   # per seed: 0.2, 0.2, 0.3
    row = report.summarise(doubled).iloc[0]
    assert row["n"] == 3 and row["mean"] == pytest.approx(0.7 / 3)
    assert row["ci95"] == pytest.approx(4.302653 * frame.assign(value=[0.2, 0.2, 0.3])["value"].std() / 3 ** 0.5,
                                        rel=1e-5)
    single = report.summarise(frame.iloc[:1]).iloc[0]
    assert single["ci95"] != single["ci95"]  # NaN: one seed has no interval
    assert report.format_mean_ci(0.2, 0.0248) == "20.0 ± 2.5" and report.format_mean_ci(0.2, float("nan")) == "20.0"


def test_paper_numbers_match_the_shared_reference():
    """The transcription in clipdef/paper_numbers.yaml equals the table in shared/reference (when present)."""
    import re
    from pathlib import Path

    ref = Path(__file__).resolve().parents[2] / "shared" / "reference" / "paper-numbers.md"
    if not ref.exists():
        pytest.skip("shared/reference/paper-numbers.md is not beside this checkout")
    text = ref.read_text()
    numbers = report.load_paper_numbers()
    for label, table in (("Top-1", "Table 1 (top-1)"), ("Top-10", "Table 1 (top-10)")):
        block = text.split(f"{label} (BA / ASR, %):")[1].split("\n\n")[0]
        lines = [line for line in block.splitlines() if line.startswith("| ") and "method" not in line]
        header = ["badnet", "blended", "sig", "wanet", "ssba", "badclip"]
        for line in lines:
            cells = [c.strip() for c in line.strip("|").split("|")]
            method = {"NoDefense": "none", "FT": "ft", "CleanCLIP": "cleanclip", "CleanerCLIP": "cleanerclip"}[cells[0]]
            for attack, cell in zip(header, cells[1:]):
                ba, asr = (float(x) / 100 for x in re.findall(r"[\d.]+", cell))
                got = numbers[(numbers.table == table) & (numbers.defense == method) & (numbers.attack == attack)]
                assert sorted(got.paper_value.round(6)) == sorted([round(ba, 6), round(asr, 6)]), \
                    (table, method, attack)


def test_claims_table_verdicts():
    import pandas as pd

    rows = []
    for seed in (0, 1):
        rows += results.rows("tiny", "03_detection", {"auroc": 0.97 + 0.01 * seed}, attack="badnet",
                             defense="detect:dao:image+text", seed=seed, regime="paper")
        rows += results.rows("tiny", "03_detection", {"auroc": 0.2}, attack="badnet",   # another regime: not read
                             defense="detect:dao:image+text", seed=seed, regime="sweep")
        rows += results.rows("tiny", "03_detection", {"auroc": 0.6}, attack="badnet", defense="detect:iforest:image",
                             seed=seed, regime="paper")
        for attack, clean, cleaner in (("badclip", 0.5, 0.2), ("badnet", 0.3, 0.25)):
            rows += results.rows("tiny", "04_cleanclip_vs_cleanerclip", {"asr_top1": cleaner, "ca_top1": 0.40},
                                 attack=attack, defense="cleanerclip", seed=seed)
            rows += results.rows("tiny", "04_cleanclip_vs_cleanerclip", {"asr_top1": clean, "ca_top1": 0.42},
                                 attack=attack, defense="cleanclip", seed=seed)
        rows += results.rows("tiny", "05_cgd", {"ca": 0.80, "asr": 0.9}, attack="badnet", defense="none", seed=seed)
        rows += results.rows("tiny", "05_cgd", {"ca": 0.79, "asr": 0.005}, attack="badnet", defense="cgd", seed=seed)
        rows += results.rows("tiny", "05_cgd", {"ca": 0.7, "asr": 0.3}, attack="badnet",
                             defense="cgd[backdoored CLIP (blended)]", seed=seed)
    table = report.claims(pd.DataFrame(rows), profiles=("tiny", "paper")).set_index("claim")
    dao = table.loc[table.index.str.startswith("DAO separates")].iloc[0]
    # per seed 0.97, 0.98: mean 0.975, t(1) · sd / √2 = 12.706 · 0.00707 / 1.414 = 0.0635
    assert dao["holds (tiny)"] == "yes" and dao["ours (tiny)"] == "0.975 ± 0.064 (n=2)"
    assert dao["verdict (tiny)"] == "inconclusive" and not dao["added"]   # [0.911, 1.039] straddles 0.95
    assert dao["ours (paper)"] == "no run" and dao["holds (paper)"] == "–"
    beats = table.loc[table.index.str.startswith("The density ratio beats")].iloc[0]
    assert beats["holds (tiny)"] == "yes" and beats["ours (tiny)"].startswith("0.375")
    badclip = table.loc["badclip: CleanerCLIP's top-1 ASR is at most CleanCLIP's (difference ≤ 0)"]
    # identical seeds: no spread
    assert badclip["holds (tiny)"] == "yes" and badclip["ours (tiny)"] == "-30.0 ± 0.0 (n=2)"
    assert badclip["verdict (tiny)"] == "holds"
    assert badclip["paper reports"] == "17.85 % vs 69.87 %"
    assert table.loc[table.index.str.startswith("The gain over CleanCLIP is largest"), "holds (tiny)"].item() == "yes"
    assert table.loc[table.index.str.startswith("CleanerCLIP keeps CleanCLIP's benign"), "ours (tiny)"].item() \
        == "2.0 ± 0.0 (n=2)"  # |0.40 − 0.42| = 2 points > 1.5
    assert table.loc[table.index.str.startswith("CleanerCLIP keeps CleanCLIP's benign"), "holds (tiny)"].item() == "no"
    assert table.loc["badnet: ASR after CGD < 1 %", "holds (tiny)"] == "yes"
    assert table.loc[table.index.str.startswith("CGD costs at most"), "ours (tiny)"].item() == "1.0 ± 0.0 (n=2)"
    assert table.loc["A backdoored CLIP guide still gives ASR < 1 %", "holds (tiny)"] == "no"
    assert table.loc["A backdoored CLIP guide still gives ASR < 1 %", "verdict (tiny)"] == "fails"
    assert table["added"].sum() == 6 and (~table["added"]).sum() == 30   # added claims never replace one
    # every original claim names the ablation that measures when it holds
    assert all(c.condition.startswith("chapter ") for c in report.paper_claims() if not c.added)
    assert table.loc["A weaker CLIP guide still gives ASR < 1 %", "ours (tiny)"] == "no run"
    assert table.loc["wanet: ASR after CGD < 1 %", "holds (tiny)"] == "–"


def test_a_batch_is_judged_against_its_seed_spread():
    import pandas as pd

    def frame(values_by_seed):
        return pd.DataFrame([r for seed, v in values_by_seed.items() for r in results.rows(
            "tiny", "02_attacks", {"asr_top1": v}, attack="sig", seed=seed)])

    batch = frame({0: 0.80, 1: 0.70, 2: 0.90})                        # seed spread: sd 0.10
    same = report.batch_agreement(frame({0: 0.80}), batch)
    assert report.batch_status(same, same_code=True) == report.IDENTICAL
    close = report.batch_agreement(frame({0: 0.95}), batch)           # 0.15 ≤ 2 × 0.10
    assert close["within_spread"].all() and report.batch_status(close, same_code=False) == report.WITHIN_SPREAD
    far = report.batch_agreement(frame({0: 0.40}), batch)             # 0.40 > 2 × 0.10
    assert report.batch_status(far, same_code=True) == report.MACHINE_DEPENDENT
    assert report.batch_status(far, same_code=False) == report.STALE
    assert report.batch_status(report.batch_agreement(frame({0: 0.8}), batch.iloc[:0]), None) == report.IDENTICAL


def test_each_chapter_of_a_batch_is_judged_with_the_code_that_made_it(monkeypatch):
    import pandas as pd

    def rows(chapter, values_by_seed):
        return [r for seed, v in values_by_seed.items()
                for r in results.rows("tiny", chapter, {"asr": v}, attack="sig", seed=seed)]

    spread = {0: 0.80, 1: 0.70, 2: 0.90}                              # sd 0.10
    batch = pd.DataFrame(rows("02_attacks", spread) + rows("05_cgd", spread) + rows("03_detection", {1: 0.5}))
    build = pd.DataFrame(rows("02_attacks", {0: 0.40}) + rows("05_cgd", {0: 0.40}))   # both 0.40 > 2 × 0.10 away
    commits = {"02_attacks": ["old"], "05_cgd": ["new"], "03_detection": ["new"]}
    agreement = report.batch_agreement(build, batch)
    per = report.chapter_status(agreement, commits, changed=lambda commit, chapter: commit == "old")
    # chapter 2 was made before a change of the code, chapter 5 after it; the build has no seed 0 of chapter 3
    assert per["status"].to_dict() == {"02_attacks": report.STALE, "03_detection": report.NOT_COMPARED,
                                       "05_cgd": report.MACHINE_DEPENDENT}
    assert per.loc["05_cgd", ["numbers compared", "equal", "within the seed spread"]].tolist() == [1, 0, 0]
    assert report.worst_status(per["status"]) == report.STALE
    assert report.worst_status(per["status"].drop("02_attacks")) == report.MACHINE_DEPENDENT
    assert report.worst_status([report.NOT_COMPARED]) == report.NOT_COMPARED
    # by default a chapter's code is the package and its own notebook, not the other chapters'
    asked = []
    monkeypatch.setattr(report, "code_changed_since", lambda commit, paths: asked.append((commit, paths)) or False)
    report.chapter_status(agreement, {"05_cgd": ["new"]})
    assert asked == [("new", ("clipdef", "notebooks/05_cgd.ipynb"))]


def test_rows_only_the_batch_ran_are_not_mixed_into_the_build_s_numbers():
    import pandas as pd

    def rows(seed, value, **where):
        return results.rows("tiny", "03_detection", {"auroc": value}, attack="badnet", defense="dao[image]",
                            seed=seed, **where)

    build = pd.DataFrame(rows(0, 0.9))
    # the batch also ran the rate study (its ablations), whose rows share attack, defense and metric
    batch = pd.DataFrame(rows(0, 0.9) + rows(1, 0.9) + rows(0, 0.1, regime="rate-study", reference="clean pairs"))
    agreement = report.batch_agreement(build, batch)
    assert len(agreement) == 1 and agreement["difference"].iloc[0] == 0
    assert report.batch_status(agreement, same_code=True) == report.IDENTICAL
    # … and chapter 2's papers' trigger settings (its ablations), rows of the same attack under another recipe
    batch = pd.DataFrame(rows(0, 0.9) + rows(1, 0.9) + rows(0, 0.4, recipe="paper"))
    assert report.batch_status(report.batch_agreement(build, batch), same_code=True) == report.IDENTICAL


def test_a_count_is_printed_as_a_count():
    assert report.format_mean_ci(19.0, 5.6, "count") == "19.0 ± 5.6"
    assert report.format_mean_ci(0.19, 0.056) == "19.0 ± 5.6"      # a share, as a percentage


@pytest.mark.parametrize("spec", sorted((Path(__file__).resolve().parents[1] / "grids").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_the_shipped_grid_specs_name_real_chapters_and_parameters(spec, monkeypatch):
    monkeypatch.chdir(spec.parents[1])   # their notebook paths are relative to the repository
    runs = cli.expand_grid(yaml.safe_load(spec.read_text()))   # validates every parameter against its chapter
    assert runs and all(nb.exists() for nb, _ in runs)
    seeds = {nb.name: sorted({p["seed"] for n, p in runs if n == nb}) for nb, _ in runs}
    assert all(s[:3] == [0, 1, 2] for s in seeds.values()), seeds   # every chapter has an interval over ≥ 3 seeds
    assert seeds["04_cleanclip_vs_cleanerclip.ipynb"] == [0, 1, 2, 3, 4]   # its verdicts need five
