"""Captions as (subject, relation, object): CleanerCLIP's sub-captions and CleanCLIP's EDA, offline.

CleanerCLIP (Xun et al., 2024) adds, for a few samples each epoch, two kinds of *sub-captions*:

* a **factual** one that keeps the caption's core — "(adjective) subject relation (adjective) object", adjectives
  kept selectively, a very simple caption reduced to its key word — and stays true of the image;
* a **counterfactual** one in which exactly one component (an adjective, the relation, or a noun) is replaced by a
  term from a ~3,000-word repository, so that it becomes false of the image.

The paper parses captions with a scene-graph parser. Here the default parser is a small rule-based one that needs
no model: closed lists of function words and spatial relations, the WordNet-derived word lists shipped in
``clipdef/vocab`` (see ``scripts/derive_vocab.py``) and suffix rules for words outside them. It reads the embedded
world's captions exactly ("a small red star left of a striped blue square") and CC3M-style captions sensibly
("a dog running on the beach at sunset" → dog / running on / beach). ``backend="spacy"`` uses SceneGraphParser with
spaCy instead when both are installed.

Everything random takes a ``numpy.random.Generator``, so the same seed gives the same sub-captions.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from clipdef import world

VOCAB_DIR = Path(__file__).parent / "vocab"

# ---------------------------------------------------------------------------------------------------------------
# Closed word classes: the parser handles these itself, and the vocabularies leave them out
# ---------------------------------------------------------------------------------------------------------------

DETERMINERS = frozenset({
    "a", "an", "the", "this", "that", "these", "those", "some", "any", "each", "every", "another", "no", "both",
    "either", "neither", "all", "many", "much", "several", "few", "more", "most", "other", "such", "own",
    "my", "your", "his", "her", "its", "our", "their",
})
NUMBERS = frozenset({
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "twenty",
    "hundred", "thousand", "dozen", "first", "second", "third",
})
PRONOUNS = frozenset({
    "i", "me", "you", "he", "him", "she", "it", "we", "us", "they", "them", "who", "whom", "whose", "which",
    "what", "there", "here", "someone", "something", "everyone", "everything", "itself", "himself", "herself",
    "themselves", "myself", "yourself",
})
PREPOSITIONS = frozenset({
    "of", "on", "in", "at", "with", "from", "to", "by", "for", "into", "onto", "under", "over", "above", "below",
    "near", "behind", "beside", "besides", "between", "among", "across", "along", "through", "down", "up",
    "around", "inside", "outside", "against", "toward", "towards", "during", "after", "before", "off", "out",
    "beneath", "underneath", "within", "without", "upon", "via", "about", "amid", "atop", "beyond", "alongside",
    "throughout", "except", "despite", "since", "until",
})
CONJUNCTIONS = frozenset({"and", "or", "but", "while", "as", "than", "if", "because", "so", "nor", "&"})
AUXILIARIES = frozenset({
    "is", "are", "was", "were", "be", "been", "being", "am", "has", "have", "had", "does", "do", "did", "will",
    "would", "can", "could", "shall", "should", "may", "might", "must", "gets", "got", "getting",
})
FUNCTION_ADVERBS = frozenset({
    "not", "very", "also", "just", "only", "too", "then", "when", "where", "why", "how", "together", "again",
    "still", "even", "really", "almost", "away", "back", "here",
})
CLOSED_CLASS_WORDS = (DETERMINERS | NUMBERS | PRONOUNS | PREPOSITIONS | CONJUNCTIONS | AUXILIARIES
                      | FUNCTION_ADVERBS)

# Words that turn "a photo of X" into X: the picture is not the content.
IMAGE_WORDS = frozenset({
    "photo", "photograph", "picture", "image", "drawing", "painting", "illustration", "sketch", "rendering",
    "render", "close-up", "closeup", "view", "portrait", "shot", "snapshot", "cartoon", "clipart", "graphic",
})
# "the top of", "the side of": part nouns that belong to the relation ("from the top of" the mountain).
PART_NOUNS = frozenset({"top", "bottom", "side", "edge", "middle", "front", "back", "center", "centre", "corner",
                        "end", "left", "right"})

# Spatial relations, longest first when matching. The world's relations come first.
SPATIAL_RELATIONS: tuple[str, ...] = tuple(dict.fromkeys((
    *world.RELATIONS, "in front of", "on top of", "to the left of", "to the right of", "on the left of",
    "on the right of", "in the middle of", "close to", "far from", "on", "in", "under", "over", "behind",
    "beside", "near", "inside", "outside", "beneath", "underneath", "between", "around", "across", "along",
    "against", "through", "at", "with", "of", "from", "into", "onto", "by", "atop", "alongside", "among",
)))
# Replacements that make a spatial relation false rather than merely different: "next to" is true whenever
# "left of" is, so "left of" must become "right of" (or lose contact entirely).
CONTRADICTING_RELATIONS: dict[str, tuple[str, ...]] = {
    "left of": ("right of",), "right of": ("left of",), "to the left of": ("to the right of",),
    "to the right of": ("to the left of",), "on the left of": ("on the right of",),
    "on the right of": ("on the left of",),
    "above": ("below", "under", "beneath"), "over": ("under", "below", "beneath"), "on top of": ("under", "below"),
    "on": ("under", "below", "beside"), "below": ("above", "over", "on top of"), "under": ("above", "over", "on"),
    "beneath": ("above", "over", "on top of"), "underneath": ("above", "on top of"),
    "next to": ("above", "below", "far from"), "beside": ("above", "below", "far from"),
    "near": ("far from",), "close to": ("far from",), "far from": ("next to", "close to"),
    "in": ("outside", "next to"), "inside": ("outside", "next to"), "outside": ("inside",),
    "in front of": ("behind",), "behind": ("in front of",),
}
SPATIAL_REPLACEMENTS: tuple[str, ...] = (
    "left of", "right of", "above", "below", "next to", "in front of", "behind", "on top of", "under", "inside",
    "far from", "near",
)

# Small closed attribute groups: a colour is replaced by another colour, a size by the opposite size.
COLOURS: tuple[str, ...] = tuple(world.COLOURS)
SIZE_GROUPS: dict[str, tuple[str, ...]] = {"small": ("small", "tiny", "little"), "large": ("large", "big", "huge")}
TEXTURES: tuple[str, ...] = world.TEXTURES

_RELATIONS_LONGEST_FIRST = tuple(sorted(SPATIAL_RELATIONS, key=lambda phrase: -len(phrase.split())))

ROLES: tuple[str, ...] = ("adjective", "relation", "noun")
BACKENDS: tuple[str, ...] = ("auto", "rules", "spacy")

_TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*")


# ---------------------------------------------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)  # compared and hashed by identity: it is a cache key
class Vocabulary:
    """The shipped word lists (most frequent first), synonyms and irregular forms."""

    adjectives: tuple[str, ...]
    verbs: tuple[str, ...]
    nouns: tuple[str, ...]
    synonyms: dict[str, frozenset[str]]
    irregular_forms: dict[tuple[str, str], str]  # (pos "n"/"v", form) -> lemma

    @functools.cached_property
    def ranks(self) -> dict[str, dict[str, int]]:
        """Position of each word in its list, per part of speech: a rough frequency rank."""
        return {pos: {w: i for i, w in enumerate(words)}
                for pos, words in (("a", self.adjectives), ("v", self.verbs), ("n", self.nouns))}

    @functools.cached_property
    def irregular_lemmas(self) -> frozenset[str]:
        return frozenset(lemma for (pos, _), lemma in self.irregular_forms.items() if pos == "v")

    @functools.cached_property
    def irregular_plurals(self) -> dict[str, str]:
        return {lemma: form for (pos, form), lemma in sorted(self.irregular_forms.items()) if pos == "n"}

    def rank(self, pos: str, word: str) -> float:
        return self.ranks[pos].get(word, float("inf"))

    def synonyms_of(self, word: str) -> frozenset[str]:
        return self.synonyms.get(word, frozenset())


def _read_words(name: str, vocab_dir: Path) -> tuple[str, ...]:
    path = vocab_dir / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; regenerate it with `python scripts/derive_vocab.py`")
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


def _read_synonyms(vocab_dir: Path) -> dict[str, frozenset[str]]:
    """Symmetric synonym sets, all parts of speech merged (a swap needs no part of speech)."""
    table: dict[str, set[str]] = {}
    for line in _read_words("synonyms.tsv", vocab_dir):
        word, _pos, synonyms = line.split("\t")
        for synonym in synonyms.split():
            table.setdefault(word, set()).add(synonym)
            table.setdefault(synonym, set()).add(word)
    return {word: frozenset(synonyms) for word, synonyms in table.items()}


def _read_irregular_forms(vocab_dir: Path) -> dict[tuple[str, str], str]:
    forms = {}
    for line in _read_words("inflections.tsv", vocab_dir):
        pos, form, lemma = line.split("\t")
        forms[(pos, form)] = lemma
    return forms


@functools.lru_cache(maxsize=4)
def load_vocabulary(vocab_dir: Path = VOCAB_DIR) -> Vocabulary:
    """The vocabularies shipped in ``clipdef/vocab`` (read once, then cached)."""
    vocab_dir = Path(vocab_dir)
    return Vocabulary(
        adjectives=_read_words("adjectives.txt", vocab_dir),
        verbs=_read_words("verbs.txt", vocab_dir),
        nouns=_read_words("nouns.txt", vocab_dir),
        synonyms=_read_synonyms(vocab_dir),
        irregular_forms=_read_irregular_forms(vocab_dir),
    )


@functools.lru_cache(maxsize=4)
def _lexicon(vocab: Vocabulary) -> dict[str, frozenset[str]]:
    """Part of speech -> set of words, with the world's words added so world captions never depend on WordNet."""
    return {
        "a": frozenset(vocab.adjectives) | set(COLOURS) | set(TEXTURES) | set().union(*SIZE_GROUPS.values()),
        "n": frozenset(vocab.nouns) | set(world.CLASSES),
        "v": frozenset(vocab.verbs),
    }


# ---------------------------------------------------------------------------------------------------------------
# Morphology: enough English inflection to lemmatise caption words and to inflect replacements like the original
# ---------------------------------------------------------------------------------------------------------------

_VOWELS = set("aeiou")


def _doubles_final_consonant(lemma: str) -> bool:
    """'run' → 'running', 'sit' → 'sitting': one vowel group ending consonant-vowel-consonant."""
    if len(lemma) < 3 or lemma[-1] in "wxy" or lemma[-1] in _VOWELS:
        return False
    vowel_groups = len(re.findall(r"[aeiou]+", lemma))
    return vowel_groups == 1 and lemma[-2] in _VOWELS and lemma[-3] not in _VOWELS


def _add_s(word: str) -> str:
    if word.endswith(("s", "x", "z", "ch", "sh")) or (word.endswith("o") and word[-2:-1] not in _VOWELS):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in _VOWELS:
        return word[:-1] + "ies"
    return word + "s"


def _add_ing(lemma: str) -> str:
    if lemma.endswith("ie"):
        return lemma[:-2] + "ying"
    if lemma.endswith("e") and not lemma.endswith(("ee", "ye", "oe")) and len(lemma) > 2:
        return lemma[:-1] + "ing"
    return lemma + (lemma[-1] if _doubles_final_consonant(lemma) else "") + "ing"


def _add_ed(lemma: str) -> str:
    if lemma.endswith("e"):
        return lemma + "d"
    if lemma.endswith("y") and lemma[-2:-1] not in _VOWELS:
        return lemma[:-1] + "ied"
    return lemma + (lemma[-1] if _doubles_final_consonant(lemma) else "") + "ed"


def _lemma_candidates(word: str, suffix: str) -> list[str]:
    """Possible lemmas of ``word`` if it carries ``suffix`` ('s', 'ing' or 'ed'), most likely first."""
    if not word.endswith(suffix) or len(word) <= len(suffix) + 1:
        return []
    stem = word[: -len(suffix)]
    candidates = [stem]
    if suffix == "s":
        candidates = [stem, word[:-2] if word.endswith("es") else stem]
        if word.endswith("ies"):
            candidates.insert(0, word[:-3] + "y")
        if word.endswith("ves"):
            candidates += [word[:-3] + "f", word[:-3] + "fe"]
    else:
        candidates += [stem + "e"]
        if len(stem) > 2 and stem[-1] == stem[-2]:
            candidates.insert(0, stem[:-1])
        if suffix == "ed" and stem.endswith("i"):
            candidates.insert(0, stem[:-1] + "y")
        if suffix == "ed":
            candidates.append(word[:-1])  # 'used' -> 'use'
        if suffix == "ing" and stem.endswith("y"):
            candidates.append(stem[:-1] + "ie")  # 'lying' -> 'lie'
    return list(dict.fromkeys(candidates))


def verb_form(word: str, vocab: Vocabulary) -> tuple[str, str] | None:
    """(lemma, form) with form in {'base', 's', 'ing', 'ed'} if ``word`` is a known verb, else None."""
    verbs = _lexicon(vocab)["v"]
    irregular = vocab.irregular_forms.get(("v", word))
    if irregular:
        return irregular, "ed"
    for form in ("ing", "ed", "s"):
        for lemma in _lemma_candidates(word, form):
            if lemma in verbs:
                return lemma, form
    return (word, "base") if word in verbs else None


def noun_lemma(word: str, vocab: Vocabulary) -> str | None:
    """The singular of a known noun ('dogs' → 'dog', 'men' → 'man'), or None."""
    nouns = _lexicon(vocab)["n"]
    if word in nouns:
        return word
    irregular = vocab.irregular_forms.get(("n", word))
    if irregular:
        return irregular
    return next((lemma for lemma in _lemma_candidates(word, "s") if lemma in nouns), None)


def is_plural(word: str, vocab: Vocabulary) -> bool:
    lemma = noun_lemma(word, vocab)
    return lemma is not None and lemma != word


def inflect_verb(lemma: str, form: str) -> str:
    return {"base": lemma, "s": _add_s(lemma), "ing": _add_ing(lemma), "ed": _add_ed(lemma)}[form]


def pluralise(noun: str, vocab: Vocabulary) -> str:
    return vocab.irregular_plurals.get(noun) or _add_s(noun)


# ---------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Parsed:
    """The parts of a caption that CleanerCLIP's sub-captions are made of.

    ``subject`` and ``object`` are surface head nouns (a compound such as "coffee cup" stays whole); their
    adjectives keep caption order. ``relation`` is a spatial phrase ("left of") or a verb with its preposition
    ("running on"). ``tokens`` are the caption's lowercased words.
    """

    subject: str
    subject_adjectives: tuple[str, ...] = ()
    relation: str | None = None
    object: str | None = None
    object_adjectives: tuple[str, ...] = ()
    tokens: tuple[str, ...] = ()
    backend: str = "rules"

    @property
    def is_simple(self) -> bool:
        """One object and nothing it relates to ("a photo of a banana"): its sub-caption is the key word."""
        return self.relation is None and self.object is None

    @property
    def adjectives(self) -> tuple[str, ...]:
        return self.subject_adjectives + self.object_adjectives

    def text(self, subject_adjectives: tuple[str, ...] | None = None,
             object_adjectives: tuple[str, ...] | None = None) -> str:
        """'small star left of blue square': the parts in order, with the given (default: all) adjectives."""
        subject_adjectives = self.subject_adjectives if subject_adjectives is None else subject_adjectives
        object_adjectives = self.object_adjectives if object_adjectives is None else object_adjectives
        words = [*subject_adjectives, self.subject]
        if self.relation:
            words.append(self.relation)
        if self.object:
            words += [*object_adjectives, self.object]
        return " ".join(words)


def tokenize(caption: str) -> tuple[str, ...]:
    """Lowercased words; punctuation dropped, hyphenated words kept, the possessive 's removed."""
    words = _TOKEN.findall(caption.lower().replace("\u2019", "'"))
    return tuple(w[:-2] if w.endswith("'s") else w for w in words)


def parse(caption: str, backend: str = "rules") -> Parsed:
    """Split a caption into (adjectives) subject – relation – (adjectives) object.

    ``backend``: ``"rules"`` (default; offline, the same everywhere), ``"spacy"`` (SceneGraphParser with spaCy;
    an ImportError if they are not installed) or ``"auto"`` (spaCy when it works here, else the rules). The default
    is the rule parser so that sub-captions, and results cached from them, do not depend on what happens to be
    installed. A caption without a single word is an error.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if not tokenize(caption):
        raise ValueError(f"caption {caption!r} has no words to parse")
    if backend == "spacy" or (backend == "auto" and _scene_graph_parser() is not None):
        return _parse_scene_graph(caption)
    return _parse_rules(caption, load_vocabulary())


@functools.lru_cache(maxsize=1 << 16)
def _parse_rules(caption: str, vocab: Vocabulary) -> Parsed:
    tokens = tokenize(caption)
    reader = _RuleReader(_strip_image_prefix(tokens), vocab)
    subject = reader.noun_phrase()
    reader.skip_conjunct()
    relation = reader.relation()
    obj = reader.noun_phrase() if relation else None
    if subject is None:  # nothing noun-like at all ("on the"): the last word is the best we have
        subject = ((), tokens[-1])
    return Parsed(subject=subject[1], subject_adjectives=subject[0], relation=relation,
                  object=obj[1] if obj else None, object_adjectives=obj[0] if obj else (), tokens=tokens)


def _strip_image_prefix(tokens: tuple[str, ...]) -> tuple[str, ...]:
    """'a black and white photo of a dog' → 'a dog'; 'view of the city' → 'the city'."""
    for i, word in enumerate(tokens[:6]):
        if word in IMAGE_WORDS and i + 1 < len(tokens) - 1 and tokens[i + 1] == "of":
            return tokens[i + 2:]
    return tokens


class _RuleReader:
    """A left-to-right reader over the caption's tokens: noun phrase, relation, noun phrase."""

    def __init__(self, tokens: tuple[str, ...], vocab: Vocabulary):
        self.tokens, self.vocab, self.lexicon, self.i = tokens, vocab, _lexicon(vocab), 0

    def peek(self, offset: int = 0) -> str | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    # -- noun phrases ---------------------------------------------------------------------------------------------

    def noun_phrase(self) -> tuple[tuple[str, ...], str] | None:
        """(adjectives, head) of the next noun phrase, or None; leading determiners and numbers are skipped."""
        while self.peek() is not None and (self.peek() in DETERMINERS | NUMBERS or self.peek().isdigit()):
            self.i += 1
        words: list[str] = []
        while (word := self.peek()) is not None and self._continues_noun_phrase(word, words):
            words.append(word)
            self.i += 1
        if not words:
            return None
        head_at = max((k for k, w in enumerate(words) if self._is_nounlike(w)), default=len(words) - 1)
        modifiers, head = words[:head_at], words[head_at:]
        adjectives = tuple(w for w in modifiers if w in self.lexicon["a"])
        compound = [w for w in modifiers if w not in self.lexicon["a"]]
        return adjectives, " ".join(compound + head)

    def _is_nounlike(self, word: str) -> bool:
        known = any(word in self.lexicon[p] for p in "anv") or verb_form(word, self.vocab) is not None
        return noun_lemma(word, self.vocab) is not None or not (known or word.endswith("ly"))

    def _continues_noun_phrase(self, word: str, words: list[str]) -> bool:
        if word in CLOSED_CLASS_WORDS or self._relation_phrase_at(self.i) or word.isdigit():
            return False
        has_head = any(self._is_nounlike(w) for w in words)
        if not has_head:
            return not (word.endswith("ly") and noun_lemma(word, self.vocab) is None)
        if noun_lemma(word, self.vocab) is None and word in self.lexicon["a"]:
            return False  # an adjective after the noun belongs to what follows ("a dog happy to ...")
        return not self._starts_verb(word, previous=words[-1])

    def _starts_verb(self, word: str, previous: str) -> bool:
        """Whether ``word``, right after a noun, is the verb of the relation ('dog running', 'actor attends')."""
        analysed = verb_form(word, self.vocab)
        if analysed is None:
            return word.endswith("ing") and noun_lemma(word, self.vocab) is None
        lemma, form = analysed
        following = self.peek(1)
        takes_object = following is not None and (following in DETERMINERS or following in PRONOUNS)
        noun = noun_lemma(word, self.vocab)
        if noun is None:
            return True
        more_often_verb = self.vocab.rank("v", lemma) < self.vocab.rank("n", noun)
        if form in ("ing", "ed"):
            return takes_object or more_often_verb
        if form == "s":  # 'dog walks' vs 'coffee cups'
            return not is_plural(previous, self.vocab) and more_often_verb
        # A bare verb needs a plural subject ('kids play in the park') and something after it.
        ends_clause = following is None or following in PREPOSITIONS or following in DETERMINERS
        return is_plural(previous, self.vocab) and ends_clause and more_often_verb

    def skip_conjunct(self) -> None:
        """'person and a friend walking': the second noun phrase of the subject is not kept."""
        if self.peek() in ("and", "&") and self.peek(1) is not None:
            start = self.i
            self.i += 1
            if self.noun_phrase() is None:
                self.i = start

    # -- relations ------------------------------------------------------------------------------------------------

    def _relation_phrase_at(self, j: int) -> str | None:
        """The longest spatial relation starting at token ``j``, including 'from the top of' patterns."""
        for phrase in _RELATIONS_LONGEST_FIRST:
            words = tuple(phrase.split())
            if self.tokens[j:j + len(words)] == words:
                if len(words) == 1 and words[0] in PREPOSITIONS:
                    return self._part_phrase_at(j) or phrase
                return phrase
        return None

    def _part_phrase_at(self, j: int) -> str | None:
        """'from the top of', 'at the edge of': a preposition, a part noun and 'of' act as one relation."""
        rest = self.tokens[j + 1:j + 4]
        if len(rest) == 3 and rest[0] in ("the", "a") and rest[1] in PART_NOUNS and rest[2] == "of":
            return " ".join(self.tokens[j:j + 4])
        if len(rest) >= 2 and rest[0] in PART_NOUNS and rest[1] == "of":
            return " ".join(self.tokens[j:j + 3])
        return None

    def relation(self) -> str | None:
        """The relation after the subject: a spatial phrase, or a verb with its particle ('walking down')."""
        while (word := self.peek()) is not None and (word in AUXILIARIES or word in FUNCTION_ADVERBS
                                                     or word.endswith("ly")):
            self.i += 1
        word = self.peek()
        if word is None:
            return None
        phrase = self._relation_phrase_at(self.i)
        if phrase:
            self.i += len(phrase.split())
            return phrase
        if word in PREPOSITIONS:
            self.i += 1
            return word
        if word in CLOSED_CLASS_WORDS or not self._is_verb(word):
            return None
        self.i += 1
        particle = self._relation_phrase_at(self.i) or (self.peek() if self.peek() in PREPOSITIONS else None)
        if particle:
            self.i += len(particle.split())
            return f"{word} {particle}"
        return word

    def _is_verb(self, word: str) -> bool:
        return verb_form(word, self.vocab) is not None or word.endswith(("ing", "ed"))


# -- the optional scene-graph backend ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _scene_graph_parser():
    """``sng_parser`` when it and a spaCy English model work, else None."""
    try:
        import sng_parser  # SceneGraphParser, which needs spaCy

        sng_parser.parse("a dog on a bench")  # loads the spaCy model, the part most likely to be missing
    except Exception:  # ImportError, or OSError/ValueError from spaCy without an English model
        return None
    return sng_parser


def _parse_scene_graph(caption: str) -> Parsed:
    """Parse with SceneGraphParser: the first relation's subject and object, or the first entity alone."""
    parser = _scene_graph_parser()
    if parser is None:
        raise ImportError("backend='spacy' needs SceneGraphParser and spaCy with an English model "
                          "(pip install SceneGraphParser spacy; python -m spacy download en_core_web_sm)")
    graph = parser.parse(caption)
    entities = graph.get("entities", [])
    if not entities:  # nothing the dependency parse calls a noun: the rule parser always finds a subject
        return _parse_rules(caption, load_vocabulary())

    def adjectives_of(entity) -> tuple[str, ...]:
        return tuple(m["span"].lower() for m in entity.get("modifiers", []) if m.get("dep") == "amod")

    relations = graph.get("relations", [])
    subject = entities[relations[0]["subject"] if relations else 0]
    obj = entities[relations[0]["object"]] if relations else None
    return Parsed(subject=subject["head"].lower(), subject_adjectives=adjectives_of(subject),
                  relation=relations[0]["relation"].lower() if relations else None,
                  object=obj["head"].lower() if obj else None,
                  object_adjectives=adjectives_of(obj) if obj else (),
                  tokens=tokenize(caption), backend="spacy")


# ---------------------------------------------------------------------------------------------------------------
# Sub-captions
# ---------------------------------------------------------------------------------------------------------------

def _as_parsed(caption: str | Parsed) -> Parsed:
    return caption if isinstance(caption, Parsed) else parse(caption)


def _keep_some(adjectives: tuple[str, ...], rng: np.random.Generator, keep_prob: float,
               always: str | None = None) -> tuple[str, ...]:
    return tuple(a for a in adjectives if a == always or rng.random() < keep_prob)


def _linearise(parsed: Parsed, rng: np.random.Generator, keep_prob: float, always: str | None = None) -> str:
    """The sub-caption text: adjectives kept with probability ``keep_prob`` (``always`` is always kept); a simple
    caption keeps no adjective but ``always``."""
    keep_prob = 0.0 if parsed.is_simple else keep_prob
    return parsed.text(_keep_some(parsed.subject_adjectives, rng, keep_prob, always),
                       _keep_some(parsed.object_adjectives, rng, keep_prob, always))


def factual(caption: str | Parsed, rng: np.random.Generator, keep_adjective_prob: float = 0.5) -> str:
    """The positive sub-caption: '(adj) subject relation (adj) object', each adjective kept with probability
    ``keep_adjective_prob``; a simple caption ('a photo of a banana.') gives its key word ('banana')."""
    return _linearise(_as_parsed(caption), rng, keep_adjective_prob)


@dataclass(frozen=True)
class Counterfactual:
    """A caption's parts with one component replaced: which role, and the word(s) before and after."""

    parsed: Parsed
    role: str
    original: str
    replacement: str


def counterfactual(caption: str | Parsed, rng: np.random.Generator,
                   keep_adjective_prob: float = 0.5) -> tuple[str, str]:
    """A negative sub-caption and the role replaced ('adjective', 'relation' or 'noun').

    Exactly one component changes; the others are linearised like :func:`factual` (so positives and negatives do
    not differ in length on average), and the replaced adjective is always kept.
    """
    change = counterfactual_parts(caption, rng)
    always = change.replacement if change.role == "adjective" else None
    return _linearise(change.parsed, rng, keep_adjective_prob, always), change.role


def counterfactual_parts(caption: str | Parsed, rng: np.random.Generator,
                         vocab: Vocabulary | None = None) -> Counterfactual:
    """Replace one component of the caption's parts.

    The role is drawn uniformly among the roles the caption has (CleanerCLIP: adjectives are skipped when there
    are none, the relation falls back to another operation when absent; a noun is always there). The replacement
    differs from the original and is not one of its WordNet synonyms. Words from small closed groups (colours,
    sizes, textures, the world's shapes, spatial relations) are replaced within their group, so the result is a
    hard negative that is false of the image; other words are replaced from the ~3,000-word lists.
    """
    parsed, vocab = _as_parsed(caption), vocab or load_vocabulary()
    available = [role for role in ROLES if _has_role(parsed, role)]
    role = available[rng.integers(len(available))]
    replace_role = {"adjective": _replace_adjective, "relation": _replace_relation, "noun": _replace_noun}[role]
    return replace_role(parsed, rng, vocab)


def _has_role(parsed: Parsed, role: str) -> bool:
    return {"adjective": bool(parsed.adjectives), "relation": parsed.relation is not None, "noun": True}[role]


def _draw(candidates, rng: np.random.Generator, excluded: set[str]) -> str:
    """A uniformly drawn candidate that is not excluded (the candidate lists are never all excluded)."""
    allowed = [c for c in candidates if c not in excluded]
    if not allowed:
        raise ValueError("no replacement left after exclusions")
    return allowed[rng.integers(len(allowed))]


def _excluded_for(word: str, vocab: Vocabulary, also=()) -> set[str]:
    return {word, *vocab.synonyms_of(word), *also}


def _replace_adjective(parsed: Parsed, rng: np.random.Generator, vocab: Vocabulary) -> Counterfactual:
    adjectives = parsed.adjectives
    position = int(rng.integers(len(adjectives)))
    original = adjectives[position]
    excluded = _excluded_for(original, vocab, adjectives)
    new = _draw(_adjective_candidates(original, vocab), rng, excluded)
    changed = list(adjectives)
    changed[position] = new
    n_subject = len(parsed.subject_adjectives)
    result = replace(parsed, subject_adjectives=tuple(changed[:n_subject]),
                     object_adjectives=tuple(changed[n_subject:]))
    return Counterfactual(result, "adjective", original, new)


def _adjective_candidates(original: str, vocab: Vocabulary) -> tuple[str, ...]:
    if original in COLOURS:
        return COLOURS
    for group, words in SIZE_GROUPS.items():
        if original in words:
            return next(other for name, other in SIZE_GROUPS.items() if name != group)
    if original in TEXTURES:
        return TEXTURES
    return vocab.adjectives


def _replace_relation(parsed: Parsed, rng: np.random.Generator, vocab: Vocabulary) -> Counterfactual:
    original = parsed.relation
    verb, _, particle = original.partition(" ")
    if original in SPATIAL_RELATIONS or verb in PREPOSITIONS:
        new = _draw(CONTRADICTING_RELATIONS.get(original, SPATIAL_REPLACEMENTS), rng, {original})
    else:
        lemma, form = verb_form(verb, vocab) or _guess_verb_form(verb)
        # Irregular verbs would need their own past tense; for a past-tense original they are left out.
        excluded = _excluded_for(lemma, vocab, vocab.irregular_lemmas if form == "ed" else ())
        new_verb = inflect_verb(_draw(vocab.verbs, rng, excluded), form)
        new = f"{new_verb} {particle}".strip()
    return Counterfactual(replace(parsed, relation=new), "relation", original, new)


def _guess_verb_form(word: str) -> tuple[str, str]:
    """(word, form) of a verb outside the lists ('sleeping' → form 'ing'), so the replacement matches it."""
    form = next((suffix for suffix in ("ing", "ed", "s") if word.endswith(suffix)), "base")
    return word, form


def _replace_noun(parsed: Parsed, rng: np.random.Generator, vocab: Vocabulary) -> Counterfactual:
    slot = "object" if parsed.object is not None and rng.random() < 0.5 else "subject"
    original = getattr(parsed, slot)
    other = parsed.object if slot == "subject" else parsed.subject
    head = original.split()[-1]
    lemma = noun_lemma(head, vocab) or head
    excluded = _excluded_for(lemma, vocab, [other, noun_lemma(other, vocab)] if other else [])
    candidates = world.CLASSES if lemma in world.CLASSES else vocab.nouns
    new = _draw(candidates, rng, excluded)
    if lemma != head:  # keep the number of the original: 'dogs' → 'cups'
        new = pluralise(new, vocab)
    return Counterfactual(replace(parsed, **{slot: new}), "noun", original, new)


# ---------------------------------------------------------------------------------------------------------------
# EDA (Wei & Zou, 2019), the text augmentation of CleanCLIP
# ---------------------------------------------------------------------------------------------------------------

def eda(caption: str, rng: np.random.Generator, alpha_sr: float = 0.1, alpha_ri: float = 0.1,
        alpha_rs: float = 0.1, p_rd: float = 0.1, vocab: Vocabulary | None = None) -> str:
    """One EDA augmentation of ``caption``, as CleanCLIP uses it: the first of the shuffled augmented sentences.

    CleanCLIP makes a few sentences with each of the four operations (synonym replacement, random insertion,
    random swap, random deletion), shuffles them and keeps the first, so one operation drawn uniformly among the
    enabled ones is applied here. Each operation changes max(1, ⌊alpha·n⌋) of the n words (deletion drops each
    word with probability ``p_rd``). Like EDA, the text is lowercased and stripped of punctuation. Synonyms come
    from the shipped WordNet table; closed-class words are never replaced. The result is never empty.
    """
    vocab = vocab or load_vocabulary()
    words = list(tokenize(caption))
    if not words:
        raise ValueError(f"caption {caption!r} has no words to augment")
    operations = [(op, strength) for op, strength in
                  (("synonym", alpha_sr), ("insert", alpha_ri), ("swap", alpha_rs), ("delete", p_rd))
                  if strength > 0]
    if not operations:
        return " ".join(words)
    operation, strength = operations[rng.integers(len(operations))]
    if operation == "delete":
        return " ".join(_random_deletion(words, strength, rng))
    n_changes = max(1, int(strength * len(words)))
    if operation == "swap":
        return " ".join(_random_swap(words, n_changes, rng))
    augment = _synonym_replacement if operation == "synonym" else _random_insertion
    return " ".join(augment(words, n_changes, rng, vocab))


def _swappable(word: str, vocab: Vocabulary) -> list[str]:
    return [] if word in CLOSED_CLASS_WORDS else sorted(vocab.synonyms_of(word))


def _synonym_replacement(words: list[str], n: int, rng: np.random.Generator, vocab: Vocabulary) -> list[str]:
    words = list(words)
    positions = [i for i, w in enumerate(words) if _swappable(w, vocab)]
    for i in rng.permutation(positions)[:n] if positions else []:
        synonyms = _swappable(words[i], vocab)
        words[i] = synonyms[rng.integers(len(synonyms))]
    return words


def _random_insertion(words: list[str], n: int, rng: np.random.Generator, vocab: Vocabulary) -> list[str]:
    words = list(words)
    sources = [w for w in words if _swappable(w, vocab)]
    for _ in range(n if sources else 0):
        synonyms = _swappable(sources[rng.integers(len(sources))], vocab)
        words.insert(int(rng.integers(len(words) + 1)), synonyms[rng.integers(len(synonyms))])
    return words


def _random_swap(words: list[str], n: int, rng: np.random.Generator) -> list[str]:
    words = list(words)
    for _ in range(n if len(words) > 1 else 0):
        i, j = rng.choice(len(words), size=2, replace=False)
        words[i], words[j] = words[j], words[i]
    return words


def _random_deletion(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    if len(words) == 1:
        return list(words)
    kept = [w for w in words if rng.random() >= p]
    return kept or [words[rng.integers(len(words))]]  # EDA keeps one random word rather than return nothing
