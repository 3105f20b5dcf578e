"""The recipes page cannot drift from the code: every setting of the book's profiles is its source's value or a
deviation with a reason (and, on the paper profile, its expected effect and the value it was written for); every
profile and settings field is some recipe's; the settings dataclasses' defaults are the sources' values."""

import dataclasses
import inspect
import json

import pytest

from clipdef import cli, detect, profiles, recipes, train
from clipdef.attacks.patches import patch_side
from clipdef.profiles import Profile

SETTINGS_FIELDS = ("cleanclip", "cleanerclip", "cgd")


def paper_with(monkeypatch, **changes) -> None:
    """The paper profile changed as someone editing clipdef/profiles.py would change it."""
    monkeypatch.setitem(profiles.PROFILES, "paper", profiles.PROFILES["paper"].replace(**changes))


@pytest.mark.parametrize("name", recipes.BOOK_PROFILES)
def test_every_setting_is_its_sources_or_its_deviation_is_explained(name):
    assert recipes.problems(name) == []


def test_paper_deviations_state_their_effect_and_value():
    paper = profiles.PROFILES["paper"]
    deviating = [r for r in recipes.RECIPES if recipes.status(paper, r) == "deviates"]
    assert deviating
    for recipe in deviating:
        why = recipes.deviation(paper, recipe)
        assert why.reason and why.effect and why.pinned, recipe.setting
        assert recipes.same(recipe.ours(paper), why.value)


def test_tiny_deviations_say_why_they_are_scaled():
    tiny = profiles.PROFILES["tiny"]
    for (_, setting), why in recipes.DEVIATIONS["tiny"].items():
        assert why.reason.startswith("scaled: ") and len(why.reason) > len("scaled: ") + 10, setting
    unexplained = [r.setting for r in recipes.RECIPES if recipes.status(tiny, r) == "deviates"
                   and recipes.deviation(tiny, r) is None]
    assert unexplained == []


def test_a_paper_value_changed_without_the_recipes_fails_the_check(monkeypatch):
    paper_with(monkeypatch, finetune_lr=1e-5)
    found = recipes.problems("paper")
    assert len(found) == 1 and "Poisoned fine-tuning / learning rate is 1e-5, the source's 1e-6" in found[0]


def test_a_deviating_paper_value_changed_fails_the_check(monkeypatch):
    paper_with(monkeypatch, n_sup_train=40_000)
    found = recipes.problems("paper")
    assert len(found) == 1 and "training images is 40,000, but its reason was written for 45,000" in found[0]


def test_a_paper_value_restored_to_its_source_leaves_no_stale_reason(monkeypatch):
    paper_with(monkeypatch, n_sup_train=50_000)
    found = recipes.problems("paper")
    assert len(found) == 1 and "explains a deviation that is not one (same)" in found[0]


def test_a_code_constant_changed_fails_the_check(monkeypatch):
    monkeypatch.setattr(train, "ADAMW_BETAS", (0.9, 0.999))   # the code now follows CleanCLIP: the reason is stale
    assert any("AdamW betas" in p and "not one" in p for p in recipes.problems("paper"))
    monkeypatch.setattr(train, "ADAMW_BETAS", (0.8, 0.9))     # another value than the reason was written for
    assert any("AdamW betas is (0.8, 0.9), but its reason was written for (0.9, 0.98)" in p
               for p in recipes.problems("paper"))


def test_every_profile_field_is_a_recipes_or_named_as_none():
    fields = {f.name for f in dataclasses.fields(Profile)}
    read = {name.split(".")[0] for r in recipes.RECIPES for name in r.fields}
    assert read <= fields, read - fields
    assert not read & set(recipes.NOT_RECIPES)
    assert fields - read - set(recipes.NOT_RECIPES) == set(), "a profile field without a recipe: add one to " \
                                                              "clipdef.recipes.RECIPES (or NOT_RECIPES, with why)"


@pytest.mark.parametrize("name", SETTINGS_FIELDS)
def test_every_settings_field_has_a_recipe(name):
    read = {f for r in recipes.RECIPES for f in r.fields}
    settings = getattr(profiles.PROFILES["paper"], name)
    assert {f"{name}.{f.name}" for f in dataclasses.fields(settings)} <= read


def test_the_settings_defaults_are_the_sources_values():
    checked = 0
    for recipe in recipes.RECIPES:
        if len(recipe.fields) != 1 or "." not in recipe.fields[0] or recipe.source is recipes.UNSTATED:
            continue
        head, tail = recipe.fields[0].split(".")
        default = getattr(type(getattr(profiles.PROFILES["paper"], head))(), tail)
        assert recipes.same(default, recipe.source), f"{recipe.fields[0]}: default {default}, source {recipe.source}"
        checked += 1
    assert checked >= 20


def test_deviations_name_recipes_and_stages_are_known():
    keys = {(r.stage, r.setting) for r in recipes.RECIPES}
    assert len(keys) == len(recipes.RECIPES), "two recipes share a (stage, setting)"
    assert {r.stage for r in recipes.RECIPES} == set(recipes.STAGES)
    for name, found in recipes.DEVIATIONS.items():
        assert set(found) <= keys, (name, set(found) - keys)


def test_tables_are_computed_from_the_profiles():
    poison = recipes.table("poison")
    assert list(poison.columns) == ["source", "tiny", "colab", "paper", "where the source sets it"]
    assert poison.loc["learning rate", "paper"] == "1e-6 ✓" and poison.loc["learning rate", "tiny"] == "0.001 ✗"
    assert recipes.table("pretrain").loc["epochs", "paper"] == "—"
    only_paper = recipes.deviations("poison", ["paper"])
    assert list(only_paper["setting"]) == ["poisoned-caption templates", "warm-up steps (run)"]
    assert list(only_paper["whose"]) == ["the code's", "the profile's"]
    counts = recipes.summary()
    assert (counts["same"] + counts["deviations"] + counts["unstated"] == counts["settings"]).all()


def test_a_profile_of_ones_own_is_compared_and_its_deviations_unexplained(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: paper\nfinetune_lr: 1.0e-5\n")
    mine = profiles.resolve(str(path))
    assert recipes.table("poison", ["paper", mine]).loc["learning rate", "mine"] == "1e-5 ✗"
    why = recipes.deviations("poison", [mine]).set_index("setting").loc["learning rate", "why"]
    assert why.startswith("not explained")


def test_bad_stages_and_profiles_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="the recipes' stages: pretrain, optimizer"):
        recipes.table("poisoning")
    with pytest.raises(ValueError, match="unknown profile 'papers'"):
        recipes.table("poison", ["papers"])


def test_values_are_shown_as_the_papers_write_them():
    assert [recipes.show(v) for v in (1e-6, 5e-4, 0.003, 500_000, 2.0, (0.9, 0.98), True, None)] == \
        ["1e-6", "5e-4", "0.003", "500,000", "2", "(0.9, 0.98)", "yes", "—"]
    assert recipes.over_255(60 / 255) == "60/255" and recipes.share(0.003) == "0.3 %"


def test_what_the_recipes_read_from_chapters_and_stages_is_what_they_do():
    chapter_3 = cli.notebook_parameters(cli.REPO_NOTEBOOKS / "03_detection.ipynb")
    assert cli.parse_value(chapter_3["k"]) == inspect.signature(detect.score).parameters["k"].default
    assert cli.parse_value(chapter_3["scoring_batch"]) == \
        inspect.signature(detect.batched).parameters["batch_size"].default
    assert "detect.LID_K if method == \"lid\"" in "".join(
        "".join(c["source"]) for c in json.loads((cli.REPO_NOTEBOOKS / "03_detection.ipynb").read_text())["cells"])
    from clipdef.stages import clip

    assert "[:BADCLIP_IMAGES]" in inspect.getsource(clip.make_trigger)


def test_badclips_patch_is_the_papers_at_224_and_the_tiny_worlds_6_px_at_32():
    assert patch_side(32) == 3 and patch_side(224) == 16 and patch_side(224, 8) == 8
    table = recipes.table("badclip")
    assert table.loc["patch side (px)", "tiny"] == "6 ✗" and table.loc["patch side (px)", "paper"] == "16 ✓"


def test_the_page_has_a_section_per_stage_in_order():
    nb = json.loads((cli.REPO_NOTEBOOKS / "07_recipes.ipynb").read_text())
    headings = [line[3:].strip() for c in nb["cells"] if c["cell_type"] == "markdown"
                for line in "".join(c["source"]).splitlines() if line.startswith("## ")]
    titles = [s.title for s in recipes.STAGES.values()]
    assert [h for h in headings if h in titles] == titles
    calls = [line for c in nb["cells"] if c["cell_type"] == "code" for line in "".join(c["source"]).splitlines()
             if line.startswith("recipes.show_stage(")]
    assert calls == [f'recipes.show_stage("{key}", compared)' for key in recipes.STAGES]
