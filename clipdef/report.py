"""Aggregating results rows into the reproduction report: mean ± 95 % CI over seeds, beside the papers' numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from clipdef import attacks, labels

GROUP = ["profile", "notebook", "attack", "defense", "metric"]


def t_quantile_975(dof: int) -> float:
    """The 97.5 % quantile of Student's t with ``dof`` degrees of freedom (scipy when present)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, dof))
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn
        return 1.96


def summarise(frame: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Mean, standard deviation, n (seeds) and the half-width of the 95 % t-interval of ``value`` per group.

    Each seed's rows in a group are averaged first, so n counts seeds, not rows. With a single seed the interval
    is undefined (NaN), not zero: one run says nothing about its spread."""
    if by is None:  # the standard columns plus any extra ones the chapters added (poison_rate, k, …)
        by = GROUP + [c for c in frame.columns if c not in GROUP + ["seed", "value"]]
    by = [c for c in by if c in frame.columns]
    if frame.empty:
        return pd.DataFrame(columns=by + ["mean", "std", "n", "ci95"])
    per_seed = frame.groupby(by + ["seed"], dropna=False)["value"].mean().reset_index()
    g = per_seed.groupby(by, dropna=False)["value"]
    out = g.agg(mean="mean", std="std", n="count").reset_index()
    out["ci95"] = [t_quantile_975(n - 1) * s / math.sqrt(n) if n > 1 else np.nan
                   for n, s in zip(out["n"], out["std"])]
    return out


def format_mean_ci(mean: float, ci: float, unit: str = labels.SHARE, digits: int | None = None) -> str:
    """'52.6 ± 1.3' for a share (printed as a percentage), '19.0 ± 5.6' for a count or seconds (as they are); a
    single run prints without the interval."""
    scale = 100.0 if unit == labels.SHARE else 1.0
    digits = (2 if unit == labels.SCORE else 1) if digits is None else digits
    if ci != ci:  # NaN
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * ci:.{digits}f}"


def mean_ci_table(frame: pd.DataFrame, notebook: str, metric: str, rows: str = "attack", columns: str = "defense",
                  **where) -> pd.DataFrame:
    """A ``rows`` × ``columns`` table of one metric of one chapter: "mean ± 95 % CI" in percent over the seeds
    (each seed's value first averaged over its matching rows), or the mean alone for one seed."""
    sel = frame[(frame["notebook"] == notebook) & (frame["metric"] == metric)] if len(frame) else frame
    for col, val in where.items():
        sel = sel[sel[col].isin(val if isinstance(val, (list, tuple, set)) else [val])]
    if sel.empty:
        return pd.DataFrame()
    per_seed = sel.groupby([rows, columns, "seed"])["value"].mean().reset_index()
    stats = summarise(per_seed.assign(profile="", notebook=notebook, metric=metric), by=[rows, columns])
    stats["cell"] = [format_mean_ci(m, c, labels.unit(metric)) for m, c in zip(stats["mean"], stats["ci95"])]
    return stats.pivot(index=rows, columns=columns, values="cell")


def load_paper_numbers() -> pd.DataFrame:
    """What the papers report (cited facts), one row per (paper, table, method, attack, metric)."""
    import yaml

    spec = yaml.safe_load((Path(__file__).parent / "paper_numbers.yaml").read_text())
    rows = []
    for table in spec["tables"]:
        for method, cells in table["values"].items():
            for attack, pair in cells.items():
                for metric, value in zip(table["metrics"], pair):
                    rows.append({"paper": table["paper"], "table": table["name"], "setting": table["setting"],
                                 "defense": method, "attack": attack, "metric": metric, "paper_value": value / 100})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------------
# The papers' claims, each as a statistic of one seed's results rows and a qualitative test
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    """One claim of a paper, testable on our results rows.

    ``statistic(rows)`` maps the rows of one profile and one seed to a number (NaN when those rows lack what it
    needs); ``holds(mean)`` is the qualitative test, applied to the mean over seeds. ``unit`` says how to print
    the statistic: "%" (a share, printed ×100), "pt" (a difference of shares, printed ×100) or "" (as is)."""

    source: str
    claim: str
    paper: str
    statistic: Callable[[pd.DataFrame], float]
    holds: Callable[[float], bool]
    unit: str = "%"
    added: bool = False   # a claim added to the original 30 (a condition or a variant of one), never replacing one
    condition: str = ""   # where a chapter measures when the claim holds: the ablation to read when it fails


def metric_value(rows: pd.DataFrame, notebook: str, metric: str, **where) -> float:
    """Mean value of the rows of ``notebook`` with ``metric`` and the given column values (lists allowed)."""
    sel = rows[(rows["notebook"] == notebook) & (rows["metric"] == metric)]
    for col, val in where.items():
        if col not in sel.columns:
            return float("nan")
        sel = sel[sel[col].isin(val if isinstance(val, (list, tuple, set)) else [val])]
    return float(sel["value"].mean()) if len(sel) else float("nan")


def _per_attack(rows: pd.DataFrame, notebook: str, metric: str, **where) -> pd.Series:
    """The metric for every attack that has it, as a Series indexed by attack."""
    sel = rows[(rows["notebook"] == notebook) & (rows["metric"] == metric)]
    for col, val in where.items():
        sel = sel[sel[col].isin(val if isinstance(val, (list, tuple, set)) else [val])] if col in sel else sel[:0]
    return sel.groupby("attack")["value"].mean()


def _largest_drop_is(attack: str):
    """1 when CleanCLIP → CleanerCLIP lowers top-1 ASR most for ``attack`` among the attacks run, else 0."""
    def statistic(rows):
        nb = labels.FINETUNE_DEFENSES
        drop = (_per_attack(rows, nb, "asr_top1", defense="cleanclip")
                - _per_attack(rows, nb, "asr_top1", defense="cleanerclip")).dropna()
        return float("nan") if attack not in drop or len(drop) < 2 else float(drop.idxmax() == attack)
    return statistic


def _cgd_ca_drop(rows: pd.DataFrame) -> float:
    """Mean over attacks of CA(no defense) − CA(CGD), as a share."""
    none = _per_attack(rows, labels.CGD_CHAPTER, "ca", defense=labels.NO_DEFENSE)
    cgd = _per_attack(rows, labels.CGD_CHAPTER, "ca", defense=labels.CGD)
    drop = (none - cgd).dropna()
    return float(drop.mean()) if len(drop) else float("nan")


def _cleaner_minus_clean(attack: str, metric: str):
    nb = labels.FINETUNE_DEFENSES
    return lambda rows: (metric_value(rows, nb, metric, attack=attack, defense="cleanerclip")
                         - metric_value(rows, nb, metric, attack=attack, defense="cleanclip"))


# Where each claim's condition is measured (the section of the chapter that varies what decides it)
_DETECTION_SHARE = "chapter 3: AUROC against the share of poisons and against k; who a poison's neighbours are"
_DETECTION_IMPLANTED = "chapter 3: detection needs a backdoor (AUROC beside ASR)"
_IMPLANTING = "chapter 2: ASR against the poison rate; the papers' settings on a 32-pixel world"
_CLEANER_GAIN = ("chapter 4: CleanerCLIP's gain over CleanCLIP along the defense; samples per epoch and "
                 "temperatures")
_DEFENSE_CURVE = "chapter 4: ASR during defense fine-tuning"
_CGD_SPLIT = "chapter 5: the split against the ground truth (CGD on the true split); how far unlearning goes"
_CGD_STEPS = "chapter 5: how far unlearning goes (CA and ASR against steps)"
_CGD_GUIDES = "chapter 5: when the split works, the guide's skill"

TABLE1_ATTACKS = ("badnet", "blended", "sig", "wanet", "ssba", "badclip")   # the attacks of CleanerCLIP's Table 1
# the supervised attacks whose CGD claims the report has tested from the start (attacks added to the suite later get
# claims of their own, so that these definitions never change)
SUPERVISED_ATTACKS = ("badnet", "blended", "sig", "wanet", "lc", "lf", "ssba", "bpp", "trojannn")


def paper_claims() -> list[Claim]:
    """The seed claims of the three papers, in the order the report shows them."""
    paper = load_paper_numbers()

    def cited(defense, attack, metric):
        r = paper[(paper.defense == defense) & (paper.attack == attack) & (paper.metric == metric)]
        return float(r.paper_value.iloc[0]) if len(r) else float("nan")

    detect, nb4, nb5 = labels.DETECTION, labels.FINETUNE_DEFENSES, labels.CGD_CHAPTER
    dao, slof = labels.detector("dao", labels.IMAGE_TEXT), labels.detector("slof", labels.IMAGE_TEXT)
    iforest = labels.detector("iforest", labels.IMAGE)
    # chapter 3's main measurement: scored as the paper scores (poisons rare in every batch)
    auroc = lambda r, d, regime="paper", **w: metric_value(r, detect, "auroc", defense=d, regime=regime, **w)
    out = [
        Claim("Huang et al. (detection)", "DAO separates poisoned from clean pairs near-perfectly (mean AUROC over "
              "attacks ≥ 0.95)", "AUROC = 1.0 (BadNets, RN50/CC3M, QuickStart); near-perfect (abstract)",
              lambda r: auroc(r, dao), lambda v: v >= 0.95, "", condition=_DETECTION_SHARE),
        Claim("Huang et al. (detection)", "SLOF separates poisoned from clean pairs near-perfectly (mean AUROC ≥ "
              "0.95)", "near-perfect (abstract)", lambda r: auroc(r, slof), lambda v: v >= 0.95, "",
              condition=_DETECTION_SHARE),
        Claim("Huang et al. (detection)", "The density ratio beats a global outlier detector (DAO AUROC − "
              "isolation-forest AUROC > 0)", "prior detectors fail where SLOF/DAO succeed (abstract)",
              lambda r: auroc(r, dao) - auroc(r, iforest), lambda v: v > 0, "", condition=_DETECTION_IMPLANTED),
    ]
    for attack in TABLE1_ATTACKS:
        out.append(Claim("CleanerCLIP Table 1", f"{attack}: the backdoor is implanted (no defense, top-1 ASR ≥ 50 %)",
                         f"{100 * cited('none', attack, 'asr_top1'):.2f} %",
                         lambda r, a=attack: metric_value(r, nb4, "asr_top1", attack=a, defense=labels.NO_DEFENSE),
                         lambda v: v >= 0.5, condition=_IMPLANTING))
    for attack in TABLE1_ATTACKS:
        out.append(Claim("CleanerCLIP Table 1", f"{attack}: CleanerCLIP's top-1 ASR is at most CleanCLIP's "
                         "(difference ≤ 0)", f"{100 * cited('cleanerclip', attack, 'asr_top1'):.2f} % vs "
                         f"{100 * cited('cleanclip', attack, 'asr_top1'):.2f} %",
                         _cleaner_minus_clean(attack, "asr_top1"), lambda v: v <= 0, "pt", condition=_CLEANER_GAIN))
    ba_gaps = [abs(cited("cleanerclip", a, "ca_top1") - cited("cleanclip", a, "ca_top1")) for a in TABLE1_ATTACKS]
    out += [
        Claim("CleanerCLIP Table 1", "CleanerCLIP keeps CleanCLIP's benign accuracy (mean |ΔBA@1| ≤ 1.5 points)",
              f"mean |ΔBA@1| = {100 * sum(ba_gaps) / len(ba_gaps):.2f} points",
              lambda r: float(pd.Series([abs(_cleaner_minus_clean(a, "ca_top1")(r)) for a in TABLE1_ATTACKS])
                              .dropna().mean()), lambda v: v <= 0.015, "pt", condition=_CLEANER_GAIN),
        Claim("CleanerCLIP Table 1", "The gain over CleanCLIP is largest against BadCLIP (1 = yes, per seed)",
              f"BadCLIP: {100 * (cited('cleanclip', 'badclip', 'asr_top1') - cited('cleanerclip', 'badclip', 'asr_top1')):.2f}"  # noqa: E501
              " points, the largest", _largest_drop_is("badclip"), lambda v: v > 0.5, "", condition=_CLEANER_GAIN),
        Claim("CleanerCLIP Table 1", "Plain fine-tuning (FT) does not remove BadCLIP (top-1 ASR ≥ 50 %)",
              f"{100 * cited('ft', 'badclip', 'asr_top1'):.2f} %",
              lambda r: metric_value(r, nb4, "asr_top1", attack="badclip", defense="ft"), lambda v: v >= 0.5,
              condition=_DEFENSE_CURVE),
    ]
    for attack in SUPERVISED_ATTACKS:
        out.append(Claim("CGD (Xu et al.)", f"{attack}: ASR after CGD < 1 %", "< 1 % (4 datasets × 11 attacks)",
                         lambda r, a=attack: metric_value(r, nb5, "asr", attack=a, defense=labels.CGD),
                         lambda v: v < 0.01, condition=_CGD_SPLIT))
    out += [
        Claim("CGD (Xu et al.)", "CGD costs at most 0.3 points of clean accuracy (mean over attacks)",
              "≤ 0.3 % CA drop", _cgd_ca_drop, lambda v: v <= 0.003, "pt", condition=_CGD_STEPS),
        Claim("CGD (Xu et al.)", "A weaker CLIP guide still gives ASR < 1 %", "robust (abstract)",
              lambda r: metric_value(r, nb5, "asr", defense=labels.guided(labels.WEAKER_GUIDE)), lambda v: v < 0.01,
              condition=_CGD_GUIDES),
        Claim("CGD (Xu et al.)", "A backdoored CLIP guide still gives ASR < 1 %", "robust (abstract)",
              lambda r: metric_value(r, nb5, "asr", defense=[d for d in r["defense"].unique()
                                                        if labels.is_guided_by(d, labels.BACKDOORED_GUIDE)]),
              lambda v: v < 0.01, condition=_CGD_GUIDES),
    ]
    return out + added_claims()


def _implanted(rows: pd.DataFrame, notebook: str) -> list[str]:
    """The attacks whose backdoor implanted (top-1 ASR ≥ 50 % with no defense) in a chapter's rows."""
    asr = _per_attack(rows, notebook, "asr_top1", defense=labels.NO_DEFENSE)
    return [a for a, v in asr.items() if v >= 0.5]


def added_claims() -> list[Claim]:
    """Claims added to the original 30: conditions under which one of them holds, and variants the issues asked
    for. They never replace one."""
    detect, nb5 = labels.DETECTION, labels.CGD_CHAPTER
    dao, iforest = labels.detector("dao", labels.IMAGE_TEXT), labels.detector("iforest", labels.IMAGE)

    def on_implanted(r, d):
        return metric_value(r, detect, "auroc", defense=d, regime="paper", attack=_implanted(r, detect))

    def cgd_ra_gap(r):
        ca = _per_attack(r, nb5, "ca", defense=labels.CGD)
        ra = _per_attack(r, nb5, "ra", defense=labels.CGD)
        gap = (ca - ra).dropna()
        return float(gap.mean()) if len(gap) else float("nan")

    later_attacks = [a for a in attacks.SUPERVISED if a not in SUPERVISED_ATTACKS]   # added to the suite since
    return [
        Claim("Huang et al. (detection)", "DAO, at the book's own poison rate with the whole set as its reference "
              "(mean AUROC ≥ 0.95)", "(the paper's regime: 0.01–0.1 % poisons)",
              lambda r: metric_value(r, detect, "auroc", defense=dao, regime="self"), lambda v: v >= 0.95, "",
              added=True),
        Claim("Huang et al. (detection)", "On the backdoors that implanted (ASR@1 ≥ 50 %): DAO's mean AUROC ≥ 0.95",
              "near-perfect (abstract)", lambda r: on_implanted(r, dao), lambda v: v >= 0.95, "", added=True),
        Claim("Huang et al. (detection)", "On the backdoors that implanted: DAO AUROC − isolation-forest AUROC > 0",
              "prior detectors fail where SLOF/DAO succeed (abstract)",
              lambda r: on_implanted(r, dao) - on_implanted(r, iforest), lambda v: v > 0, "", added=True),
        Claim("CGD (Xu et al.)", "CGD removes rather than re-targets: RA within 5 points of CA after CGD (mean CA − RA "
              "over attacks ≤ 5 points)", "(RA not reported in the abstract)", cgd_ra_gap, lambda v: v <= 0.05,
              "pt", added=True),
        Claim("CGD (Xu et al.)", "On the true split, CGD's unlearning gives ASR < 1 % (mean over attacks)",
              "(a control: the ground truth in place of CGD's split)",
              lambda r: metric_value(r, nb5, "asr", defense=labels.CGD_TRUE_SPLIT), lambda v: v < 0.01, added=True),
    ] + [Claim("CGD (Xu et al.)", f"{attack}: ASR after CGD < 1 %", "< 1 % (4 datasets × 11 attacks)",
               lambda r, a=attack: metric_value(r, nb5, "asr", attack=a, defense=labels.CGD), lambda v: v < 0.01,
               added=True, condition=_CGD_SPLIT) for attack in later_attacks]


def _format(value: float, unit: str) -> str:
    if unit in ("%", "pt"):
        return f"{100 * value:.1f}"
    return f"{value:.3f}"


HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"


def verdict(claim: Claim, mean: float, ci: float) -> str:
    """The claim judged on its 95 % interval: *holds* when the whole interval lies on the claim's side of its
    threshold, *fails* when it lies on the other side, *inconclusive* when it straddles the threshold (or, with a
    single seed, when there is no interval)."""
    if ci != ci:  # one seed: no interval
        return INCONCLUSIVE
    ends = [claim.holds(mean - ci), claim.holds(mean + ci)]
    return HOLDS if all(ends) else FAILS if not any(ends) else INCONCLUSIVE


def claims(frame: pd.DataFrame, profiles=("tiny", "paper"), claim_list: list[Claim] | None = None) -> pd.DataFrame:
    """Every claim as a row: the paper's statement and number, ours per profile (mean ± 95 % CI over seeds, n), the
    verdict on the mean ("yes"/"no") and on the interval (:func:`verdict`); "–" when no seed of that profile has
    the rows it needs."""
    out = []
    for c in claim_list or paper_claims():
        row = {"source": c.source, "claim": c.claim, "paper reports": c.paper, "added": c.added,
               "condition measured in": c.condition}
        for prof in profiles:
            sel = frame[frame["profile"] == prof] if len(frame) else frame
            per_seed = pd.Series({seed: c.statistic(rows) for seed, rows in sel.groupby("seed")}, dtype=float)
            per_seed = per_seed.dropna()
            n = len(per_seed)
            if n == 0:
                row[f"ours ({prof})"], row[f"holds ({prof})"], row[f"verdict ({prof})"] = "no run", "–", "–"
                continue
            mean = float(per_seed.mean())
            ci = t_quantile_975(n - 1) * per_seed.std() / math.sqrt(n) if n > 1 else float("nan")
            text = _format(mean, c.unit) + ("" if ci != ci else f" ± {_format(ci, c.unit)}")
            row[f"ours ({prof})"] = f"{text} (n={n})"
            row[f"holds ({prof})"] = "yes" if c.holds(mean) else "no"
            row[f"verdict ({prof})"] = verdict(c, mean, ci)
        out.append(row)
    return pd.DataFrame(out)


# ---------------------------------------------------------------------------------------------------------------
# Is a published batch current? This build's seed 0 against the batch's, judged against the batch's seed spread
# ---------------------------------------------------------------------------------------------------------------

IDENTICAL, WITHIN_SPREAD, MACHINE_DEPENDENT, STALE = "identical", "within the seed spread", "machine-dependent", \
    "stale"
STATUS_ORDER = (IDENTICAL, WITHIN_SPREAD, MACHINE_DEPENDENT, STALE)   # from best to worst
NOT_COMPARED = "not compared"   # a chapter of the batch this build has no seed-0 number of


def batch_agreement(build: pd.DataFrame, batch: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Every number this build and the batch both have for ``seed``: the two values, their difference, and the
    batch's spread over its seeds (the standard deviation of that number); ``within_spread`` when the difference is
    at most two of them (exactly equal when the batch has no spread)."""
    keys = ["notebook", "attack", "defense", "metric"]
    if build.empty or batch.empty:
        return pd.DataFrame(columns=["this build", "batch", "difference", "seed spread", "within_spread"])
    # the columns that tell a chapter's rows apart (detection's rate study from its main table, a curve's steps,
    # chapter 2's papers' trigger settings from its own), in either: a row that lacks one is compared only with rows
    # that lack it too
    extra = [c for c in ("poison_rate", "k", "regime", "reference", "at_step", "recipe") if c in build or c in batch]
    build, batch = (f.assign(**{c: f[c] if c in f else float("nan") for c in extra}) for f in (build, batch))
    a = build[build.seed == seed].groupby(keys + extra, dropna=False)["value"].mean()
    b = batch[batch.seed == seed].groupby(keys + extra, dropna=False)["value"].mean()
    per_seed = batch.groupby(keys + extra + ["seed"], dropna=False)["value"].mean()
    spread = per_seed.groupby(level=list(range(len(keys + extra))), dropna=False).std()
    both = pd.concat({"this build": a, "batch": b, "seed spread": spread}, axis=1, join="inner")
    both = both.dropna(subset=["this build", "batch"])
    both["difference"] = (both["this build"] - both["batch"]).abs()
    both["within_spread"] = both["difference"] <= 2 * both["seed spread"].fillna(0) + 1e-9
    return both[["this build", "batch", "difference", "seed spread", "within_spread"]]


def batch_status(agreement: pd.DataFrame, same_code: bool | None) -> str:
    """What the comparison says: *identical*; *within the seed spread* (every difference at most two standard
    deviations of the batch's seeds); *machine-dependent* (larger differences, but the code that made the batch is
    this build's: another CPU or PyTorch build sums in another order); *stale* (larger differences and the code
    changed since the batch: rerun the grid)."""
    if agreement.empty or (agreement["difference"] < 1e-12).all():
        return IDENTICAL
    if agreement["within_spread"].all():
        return WITHIN_SPREAD
    return MACHINE_DEPENDENT if same_code else STALE


def chapter_status(agreement: pd.DataFrame, commits_by_chapter: dict[str, list[str]],
                   changed=None) -> pd.DataFrame:
    """:func:`batch_status` chapter by chapter: a published batch may hold chapters made at different commits (one
    chapter re-published after a change of its own), so each chapter's numbers are judged with the code that made
    them. ``agreement``: :func:`batch_agreement`'s frame; ``commits_by_chapter``: chapter (the rows' notebook) → the
    commits of its runs; ``changed(commit, chapter)``: by default, has the package or that chapter's own notebook
    changed since the commit (:func:`code_changed_since`; another chapter's notebook makes none of its numbers)."""
    changed = changed or (lambda commit, chapter: code_changed_since(commit, ("clipdef", f"notebooks/{chapter}.ipynb")))
    chapters = agreement.index.get_level_values("notebook") if len(agreement) else pd.Index([])
    out = []
    for chapter, commits in sorted(commits_by_chapter.items()):
        own = agreement[chapters == chapter]
        same_code = bool(commits) and all(changed(c, chapter) is False for c in commits)
        out.append({"chapter": chapter, "made at": ", ".join(sorted(c[:10] for c in commits)),
                    "numbers compared": len(own), "equal": int((own["difference"] < 1e-12).sum()),
                    "within the seed spread": int(own["within_spread"].sum()),
                    "status": batch_status(own, same_code) if len(own) else NOT_COMPARED})
    return pd.DataFrame(out, columns=["chapter", "made at", "numbers compared", "equal", "within the seed spread",
                                      "status"]).set_index("chapter")


def worst_status(statuses) -> str:
    """The batch's status: the worst of its chapters' (:data:`STATUS_ORDER`), those not compared left out."""
    compared = [s for s in statuses if s in STATUS_ORDER]
    return max(compared, key=STATUS_ORDER.index) if compared else NOT_COMPARED


def code_changed_since(commit: str | None, paths=("clipdef", "notebooks")) -> bool | None:
    """Has the package or a chapter changed between ``commit`` and this checkout (committed or not)? None when it
    cannot be told (no git, or the commit is not in this clone's history)."""
    import subprocess

    if not commit:
        return None
    repo = Path(__file__).resolve().parent.parent
    try:
        run = subprocess.run(["git", "diff", "--quiet", commit, "--", *paths], cwd=repo, capture_output=True,
                             timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return {0: False, 1: True}.get(run.returncode)
