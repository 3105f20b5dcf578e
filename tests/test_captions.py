"""Caption parsing, CleanerCLIP sub-captions, EDA and the shipped WordNet vocabularies."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipdef import captions, world
from clipdef.captions import Parsed, counterfactual, counterfactual_parts, eda, factual, load_vocabulary, parse

REPO = Path(__file__).resolve().parents[1]

# caption, subject adjectives, subject, relation, object adjectives, object
PARSE_TABLE = [
    ("a small red star left of a striped blue square", ("small", "red"), "star", "left of", ("striped", "blue"),
     "square"),
    ("a large dotted green circle above a yellow moon", ("large", "dotted", "green"), "circle", "above",
     ("yellow",), "moon"),
    ("a tiny checkered cup next to a big plain heart", ("tiny", "checkered"), "cup", "next to", ("big", "plain"),
     "heart"),
    ("a cross below a cup", (), "cross", "below", (), "cup"),
    ("a photo of a red banana", ("red",), "banana", None, (), None),
    ("a drawing of a large brown circle", ("large", "brown"), "circle", None, (), None),
    ("a picture of an apple", (), "apple", None, (), None),
    ("a photo of a banana.", (), "banana", None, (), None),
    ("banana", (), "banana", None, (), None),
    ("actor attends the premiere of the film", (), "actor", "attends", (), "premiere"),
    ("a dog running on the beach at sunset", (), "dog", "running on", (), "beach"),
    ("person and a friend walking down the street", (), "person", "walking down", (), "street"),
    ("view of the city from the top of the mountain", (), "city", "from the top of", (), "mountain"),
    ("a man sitting on a wooden bench", (), "man", "sitting on", ("wooden",), "bench"),
    ("the old man is reading a newspaper", ("old",), "man", "reading", (), "newspaper"),
    ("two young girls playing with a ball in the park", ("young",), "girls", "playing with", (), "ball"),
    ("a woman in a red dress", (), "woman", "in", ("red",), "dress"),
    ("cars parked in front of the building", (), "cars", "parked in front of", (), "building"),
    ("illustration of a cartoon character holding a heart", (), "cartoon character", "holding", (), "heart"),
    ("beautiful sunset over the sea", ("beautiful",), "sunset", "over", (), "sea"),
    ("coffee cups on the table", (), "coffee cups", "on", (), "table"),
    ("a cat sleeping", (), "cat", "sleeping", (), None),
]

REAL_CAPTIONS = [row[0] for row in PARSE_TABLE if row[0] not in ("banana",)] + [
    "young woman with a smartphone", "city skyline at night", "Dogs!!", "the dog", "on the",
    "vector illustration of a cute dog", "a bowl of fresh fruit on the table",
]


def world_captions(n: int = 60) -> list[tuple[world.Scene, str]]:
    rng = np.random.default_rng(123)
    scenes = [world.sample_scene(rng) for _ in range(n)]
    return [(scene, world.caption_scene(scene, rng)) for scene in scenes]


# ---------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("caption, subject_adjectives, subject, relation, object_adjectives, obj", PARSE_TABLE)
def test_parse_table(caption, subject_adjectives, subject, relation, object_adjectives, obj):
    parsed = parse(caption, backend="rules")
    assert (parsed.subject_adjectives, parsed.subject, parsed.relation, parsed.object_adjectives,
            parsed.object) == (subject_adjectives, subject, relation, object_adjectives, obj)


def test_parse_reads_every_world_caption_exactly():
    for scene, caption in world_captions():
        parsed = parse(caption, backend="rules")
        subject = scene.objects[0]
        assert parsed.subject == subject.shape, caption
        assert set(parsed.subject_adjectives) <= set(subject.adjectives()), caption
        assert parsed.relation == scene.relation, caption
        if len(scene.objects) == 2:
            assert parsed.object == scene.objects[1].shape, caption
            assert set(parsed.object_adjectives) <= set(scene.objects[1].adjectives()), caption
        # Every adjective in the caption is found, none is lost to a noun.
        n_adjectives = sum(w in captions.COLOURS or w in ("small", "large", "striped", "dotted", "checkered")
                           for w in caption.split())
        assert len(parsed.adjectives) == n_adjectives, caption


def test_parse_keeps_tokens_and_rejects_empty_captions():
    assert parse("A Photo of a Banana.").tokens == ("a", "photo", "of", "a", "banana")
    with pytest.raises(ValueError, match="no words"):
        parse("  ...  ")
    with pytest.raises(ValueError, match="backend"):
        parse("a dog", backend="stanza")


def test_spacy_backend_reads_a_scene_graph(monkeypatch):
    class FakeSceneGraphParser:
        @staticmethod
        def parse(caption):
            return {"entities": [
                {"head": "Woman", "modifiers": [{"dep": "det", "span": "A"}, {"dep": "amod", "span": "young"}]},
                {"head": "piano", "modifiers": [{"dep": "det", "span": "the"}]}],
                "relations": [{"subject": 0, "object": 1, "relation": "playing"}]}

    monkeypatch.setattr(captions, "_scene_graph_parser", lambda: FakeSceneGraphParser)
    parsed = parse("A young woman is playing the piano.", backend="spacy")
    assert (parsed.subject_adjectives, parsed.subject, parsed.relation, parsed.object, parsed.backend) == (
        ("young",), "woman", "playing", "piano", "spacy")
    assert parse("A young woman is playing the piano.", backend="auto").backend == "spacy"


def test_spacy_backend_without_spacy_is_a_clear_error_and_auto_falls_back(monkeypatch):
    monkeypatch.setattr(captions, "_scene_graph_parser", lambda: None)
    with pytest.raises(ImportError, match="SceneGraphParser"):
        parse("a dog on a bench", backend="spacy")
    assert parse("a dog on a bench", backend="auto").backend == "rules"


# ---------------------------------------------------------------------------------------------------------------
# Factual sub-captions
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("caption", REAL_CAPTIONS + [c for _, c in world_captions(20)])
def test_factual_keeps_subject_relation_and_object_in_order(caption):
    parsed = parse(caption)
    for seed in range(5):
        text = factual(caption, np.random.default_rng(seed))
        expected = [parsed.subject] + ([parsed.relation] if parsed.relation else []) + (
            [parsed.object] if parsed.object else [])
        assert re.search(".*".join(re.escape(part) for part in expected), text), (caption, text)
        assert set(text.split()) <= set(parsed.text().split())


@pytest.mark.parametrize("caption, key_word", [("a picture of an apple", "apple"), ("a photo of a banana.", "banana"),
                                               ("a drawing of a large brown circle", "circle"), ("dogs", "dogs")])
def test_simple_captions_keep_only_the_key_word(caption, key_word):
    assert parse(caption).is_simple
    assert {factual(caption, np.random.default_rng(seed)) for seed in range(10)} == {key_word}


def test_factual_keeps_adjectives_selectively():
    caption = "a large dotted green circle above a yellow moon"
    texts = {factual(caption, np.random.default_rng(seed)) for seed in range(200)}
    assert "circle above moon" in texts and "large dotted green circle above yellow moon" in texts
    assert {factual(caption, np.random.default_rng(0), keep_adjective_prob=1.0)} == {
        "large dotted green circle above yellow moon"}


# ---------------------------------------------------------------------------------------------------------------
# Counterfactual sub-captions
# ---------------------------------------------------------------------------------------------------------------

PROPERTY_CAPTIONS = REAL_CAPTIONS + [c for _, c in world_captions(30)] + ["banana", "red", "the dogs", "sleeping"]


def changed_fields(before: Parsed, after: Parsed) -> list[str]:
    fields = ("subject", "relation", "object")
    changed = [f for f in fields if getattr(before, f) != getattr(after, f)]
    pairs = zip(before.adjectives, after.adjectives, strict=True)
    changed += [f"adjective {i}" for i, (a, b) in enumerate(pairs) if a != b]
    return changed


def test_counterfactual_changes_exactly_one_role_and_is_never_empty():
    vocab = load_vocabulary()
    roles_seen = set()
    for caption in PROPERTY_CAPTIONS:
        parsed = parse(caption)
        for seed in range(25):
            change = counterfactual_parts(parsed, np.random.default_rng(seed))
            changed = changed_fields(parsed, change.parsed)
            assert len(changed) == 1, (caption, change)
            assert len(change.parsed.adjectives) == len(parsed.adjectives)
            expected_kind = {"adjective": "adjective", "relation": "relation", "subject": "noun", "object": "noun"}
            assert expected_kind[changed[0].split()[0]] == change.role
            assert change.replacement and change.replacement != change.original
            assert change.replacement not in vocab.synonyms_of(change.original)
            text, role = counterfactual(parsed, np.random.default_rng(seed))
            assert text.strip() and role in captions.ROLES
            roles_seen.add(role)
    assert roles_seen == set(captions.ROLES)


def test_counterfactual_falls_back_when_a_role_is_missing():
    no_adjective_no_relation = {counterfactual("banana", np.random.default_rng(s))[1] for s in range(20)}
    assert no_adjective_no_relation == {"noun"}
    no_adjective = {counterfactual("a dog running on the beach", np.random.default_rng(s))[1] for s in range(40)}
    assert no_adjective == {"relation", "noun"}
    no_relation = {counterfactual("a photo of a red banana", np.random.default_rng(s))[1] for s in range(40)}
    assert no_relation == {"adjective", "noun"}


def test_counterfactual_keeps_the_replaced_adjective_in_the_text():
    caption = "a small red star left of a striped blue square"
    for seed in range(30):
        change = counterfactual_parts(caption, np.random.default_rng(seed))
        text, role = counterfactual(caption, np.random.default_rng(seed))  # draws the same change first
        if role == "adjective":
            assert change.replacement in text.split()


def test_counterfactual_replacements_are_false_of_the_world_image():
    for seed in range(40):
        change = counterfactual_parts("a small red star left of a striped blue square", np.random.default_rng(seed))
        if change.original == "left of":
            assert change.replacement == "right of"  # "next to" would still be true
        if change.original == "small":
            assert change.replacement in captions.SIZE_GROUPS["large"]
        if change.original in ("star", "square"):
            assert change.replacement in world.CLASSES and change.replacement not in ("star", "square")


def test_counterfactual_inflects_verbs_and_nouns_like_the_original():
    forms = set()
    for seed in range(30):
        change = counterfactual_parts("two young girls playing with a ball", np.random.default_rng(seed))
        if change.role == "relation":
            assert change.replacement.endswith("ing with")
            forms.add("verb")
        if change.role == "noun" and change.original == "girls":
            assert change.replacement.endswith("s")
            forms.add("noun")
    assert forms == {"verb", "noun"}


def test_sub_captions_are_deterministic_given_the_seed():
    caption = "a man sitting on a wooden bench"
    for function in (factual, counterfactual, eda):
        assert function(caption, np.random.default_rng(7)) == function(caption, np.random.default_rng(7))
    results = {counterfactual(caption, np.random.default_rng(seed)) for seed in range(20)}
    assert len(results) > 5


# ---------------------------------------------------------------------------------------------------------------
# EDA
# ---------------------------------------------------------------------------------------------------------------

def test_eda_changes_little_and_is_never_empty():
    changed = 0
    for caption in PROPERTY_CAPTIONS:
        original = list(captions.tokenize(caption))
        for seed in range(10):
            words = eda(caption, np.random.default_rng(seed)).split()
            assert words
            shared = sum(min(original.count(w), words.count(w)) for w in set(words))
            budget = max(1, int(0.1 * len(original)))
            # One operation: at most `budget` replacements or insertions, or a few deletions, or one swap.
            assert shared >= len(original) - max(budget, 3), (caption, words)
            assert len(words) <= len(original) + budget
            changed += words != original
    assert changed > len(PROPERTY_CAPTIONS) * 10 / 3


def test_eda_with_every_operation_off_returns_the_cleaned_caption():
    got = eda("A dog, running!", np.random.default_rng(0), alpha_sr=0, alpha_ri=0, alpha_rs=0, p_rd=0)
    assert got == "a dog running"


def test_eda_single_word_caption_survives_deletion():
    for seed in range(10):
        assert eda("banana", np.random.default_rng(seed), alpha_sr=0, alpha_ri=0, alpha_rs=0, p_rd=0.9)


# ---------------------------------------------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["adjectives", "verbs", "nouns"])
def test_vocabularies_are_about_3000_clean_unique_terms(name):
    words = getattr(load_vocabulary(), name)
    assert 2500 <= len(words) <= 3500
    assert len(set(words)) == len(words)
    assert all(re.fullmatch(r"[a-z]+(?:[ -][a-z]+){0,2}", w) for w in words)
    assert not set(words) & captions.CLOSED_CLASS_WORDS


def test_vocabularies_hold_the_world_words():
    vocab = load_vocabulary()
    assert set(world.CLASSES) <= set(vocab.nouns)
    assert set(world.COLOURS) | {"small", "large", "tiny", "big", "striped", "dotted", "checkered"} <= set(
        vocab.adjectives)


def test_vocabulary_files_are_small_and_carry_the_wordnet_licence():
    vocab_dir = REPO / "clipdef" / "vocab"
    assert sum(p.stat().st_size for p in vocab_dir.iterdir()) < 400_000
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in (vocab_dir / "LICENSE-WordNet").read_text()


def test_synonyms_are_symmetric_and_exclude_the_word_itself():
    vocab = load_vocabulary()
    assert "large" in vocab.synonyms_of("big") and "big" in vocab.synonyms_of("large")
    assert all(word not in synonyms for word, synonyms in vocab.synonyms.items())


WORDNET_DIR = Path("/usr/share/wordnet")


@pytest.mark.skipif(not (WORDNET_DIR / "index.sense").exists() or importlib.util.find_spec("nltk") is None,
                    reason="needs the WordNet 3.0 files (apt-get install wordnet-base wordnet-sense-index) and nltk")
def test_shipped_vocabularies_equal_a_fresh_derivation():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "derive_vocab.py"), "--check"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
