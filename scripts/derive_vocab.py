"""Derive the WordNet 3.0 vocabularies that ``clipdef.captions`` ships, reproducibly.

    python scripts/derive_vocab.py            # write clipdef/vocab/*
    python scripts/derive_vocab.py --check    # exit 1 unless the shipped files equal a fresh derivation

Needs the WordNet 3.0 database files (Debian: ``apt-get install wordnet-base wordnet-sense-index``, which puts
them under /usr/share/wordnet) and NLTK. The files are copied into a temporary NLTK data folder together with the
``lexnames`` file that NLTK needs and Debian does not ship (NLTK refuses paths outside its data folders).

How the lists are made (CleanerCLIP's "~3,000-term repositories, common to rare"):

* A lemma's frequency is the sum of the SemCor tag counts (``index.sense``) of its senses in that part of speech.
  Lemmas are sorted by that count, most frequent first (ties: more senses first, then alphabetically), and the
  first ``--size`` are kept.
* Only single lowercase alphabetic words of at least three letters: no proper nouns (capitalised lemmas,
  instance nouns such as cities), no multi-word collocations.
* Senses marked in WordNet as slang, disparaging, ethnic slurs or obscene do not count, nor do trademarks,
  comparatives and superlatives; a word whose first or second sense is disparaging, a slur or obscene is left
  out altogether, as are a few words judged by hand (``HAND_EXCLUDED``).
* Nouns come from the lexicographer files of things one can picture (animals, artifacts, food, people, places,
  events, ...) so that a counterfactual noun names something an image could show. Verbs must have a WordNet
  sentence frame with an object or a prepositional phrase ("Somebody ----s something", "Somebody ----s PP"),
  i.e. be relational; the auxiliaries be/have/do are left out. Closed-class words the caption parser treats
  itself (determiners, numbers, prepositions, pronouns) are left out of all lists.
* The words of the embedded world (colours, sizes, textures, shape names) are always included, so world captions
  parse with the shipped lexicon alone.

Also written: ``synonyms.tsv`` (word, part of speech, up to 6 listed synonyms from its most frequent sense; for EDA and
to keep counterfactual replacements from being synonyms) and ``inflections.tsv`` (irregular plural and verb forms
of the listed words, from WordNet's exception lists).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clipdef import world  # noqa: E402
from clipdef.captions import CLOSED_CLASS_WORDS, SIZE_GROUPS  # noqa: E402

DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
DEFAULT_OUT = REPO / "clipdef" / "vocab"
WORDNET_FILES = ("cntlist.rev", "index.sense", "index.adj", "index.adv", "index.noun", "index.verb", "data.adj",
                 "data.adv", "data.noun", "data.verb", "adj.exc", "adv.exc", "noun.exc", "verb.exc")

# The 45 WordNet 3.0 lexicographer files in their numbered order (wninput(5WN)); NLTK reads them from `lexnames`.
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
SYNTACTIC_CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}

PICTURABLE_NOUN_FILES = frozenset({
    "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.body", "noun.event", "noun.food", "noun.group",
    "noun.location", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.shape",
    "noun.substance", "noun.time",
})
# Frames 4, 8-22, 27 and 31 of frames.vrb take an object or a prepositional phrase.
RELATIONAL_FRAMES = frozenset({4, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 27, 31})
OFFENSIVE_USAGE = frozenset({"disparagement.n.01", "ethnic_slur.n.01", "obscenity.n.02"})
UNWANTED_USAGE = frozenset({"slang.n.02", "trademark.n.02", "trade_name.n.01", "comparative.n.01",
                            "superlative.n.01"})
OFFENSIVE_SENSE_RANK = 2  # a word whose first or second sense is offensive is left out altogether
# Slurs or vulgar words in common use that WordNet marks late in their sense list or not at all (judged by hand).
HAND_EXCLUDED = frozenset({"ass", "idiot", "moron", "negro", "pansy", "pussy", "rape", "retard", "whore"})
AUXILIARIES = frozenset({"be", "have", "do"})
WORD = re.compile(r"^[a-z]{3,}$")
MAX_SYNONYMS = 6
SYNONYM_SENSES = 1  # synonyms of the most frequent sense only: "yellow" must not become "chicken" (sense 2)


def write_lexnames(path: Path) -> None:
    with open(path, "w") as f:
        for number, name in enumerate(LEXNAMES):
            f.write(f"{number:02d}\t{name}\t{SYNTACTIC_CATEGORY[name.split('.')[0]]}\n")


def open_wordnet(wordnet_dir: Path, scratch: Path):
    """An NLTK WordNet reader over a copy of the Debian files plus a generated ``lexnames``."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    corpus = scratch / "corpora" / "wordnet"
    corpus.mkdir(parents=True)
    for name in WORDNET_FILES:
        shutil.copyfile(wordnet_dir / name, corpus / name)
    write_lexnames(corpus / "lexnames")
    nltk.data.path.insert(0, str(scratch))
    with warnings.catch_warnings():  # "multilingual functions are not available": we need none
        warnings.simplefilter("ignore")
        reader = WordNetCorpusReader(str(corpus), None)
    if reader.get_version() != "3.0":
        raise SystemExit(f"expected WordNet 3.0 in {wordnet_dir}, found {reader.get_version()}")
    return reader


def read_tag_counts(wordnet_dir: Path) -> dict[str, int]:
    """Sense key -> SemCor tag count, from ``index.sense`` (lines: key offset sense_number tag_count)."""
    counts = {}
    with open(wordnet_dir / "index.sense") as f:
        for line in f:
            key, _offset, _number, count = line.split()
            counts[key] = int(count)
    return counts


def usage_of(synset) -> set[str]:
    return {domain.name() for domain in synset.usage_domains()}


def offensive_lemmas(wn) -> set[str]:
    """Words whose first or second sense (in some part of speech) WordNet marks as disparaging, a slur or
    obscene. Rarer offensive senses only lose their count (``usable_synset``): 'boy' stays, a slur does not."""
    offensive = set()
    for pos in "nva":
        for name in wn.all_lemma_names(pos):
            if WORD.match(name) and any(usage_of(synset) & OFFENSIVE_USAGE
                                        for synset in wn.synsets(name, pos)[:OFFENSIVE_SENSE_RANK]):
                offensive.add(name)
    return offensive


def usable_synset(synset) -> bool:
    return not synset.instance_hypernyms() and not usage_of(synset) & (OFFENSIVE_USAGE | UNWANTED_USAGE)


def lemma_frequencies(wn, pos: str, counts: dict[str, int], keep_synset, keep_lemma) -> collections.Counter:
    """Summed tag counts of the acceptable lemmas of one part of speech (only lemmas with a positive count)."""
    total = collections.Counter()
    for synset in wn.all_synsets(pos):
        if not (usable_synset(synset) and keep_synset(synset)):
            continue
        for lemma in synset.lemmas():
            if WORD.match(lemma.name()) and keep_lemma(lemma):
                total[lemma.name()] += counts.get(lemma.key(), 0)
    return collections.Counter({word: n for word, n in total.items() if n > 0})


def rank(frequencies: collections.Counter, senses: dict[str, int], size: int, excluded: set[str],
         required: list[str]) -> list[str]:
    """The ``size`` most frequent words, always including the ``required`` ones.

    Ties (many words share a small tag count) go to the word with more senses, a proxy for how common it is,
    then alphabetically. Required words without a count go last."""
    def order(word):
        return -frequencies.get(word, 0), -senses.get(word, 0), word

    chosen = set(required)
    for word in sorted(frequencies, key=order):
        if len(chosen) >= size:
            break
        if word not in excluded:
            chosen.add(word)
    return sorted(chosen, key=order)


def world_adjectives() -> list[str]:
    return [*world.COLOURS, *SIZE_GROUPS["small"], *SIZE_GROUPS["large"], *world.TEXTURES]


def derive_word_lists(wn, counts: dict[str, int], size: int) -> dict[str, list[str]]:
    excluded = set(CLOSED_CLASS_WORDS) | offensive_lemmas(wn) | HAND_EXCLUDED
    every = lambda _: True  # noqa: E731
    adjectives = lemma_frequencies(wn, "a", counts, every, every)
    nouns = lemma_frequencies(wn, "n", counts, lambda s: s.lexname() in PICTURABLE_NOUN_FILES, every)
    verbs = lemma_frequencies(wn, "v", counts, every,
                              lambda lemma: bool(set(lemma.frame_ids()) & RELATIONAL_FRAMES))
    return {
        "adjectives": rank(adjectives, sense_counts(wn, "a"), size, excluded, world_adjectives()),
        "nouns": rank(nouns, sense_counts(wn, "n"), size, excluded, list(world.CLASSES)),
        "verbs": rank(verbs, sense_counts(wn, "v"), size, excluded | AUXILIARIES, []),
    }


def sense_counts(wn, pos: str) -> dict[str, int]:
    """Number of senses of each lemma in one part of speech (its polysemy)."""
    return collections.Counter(lemma.name() for synset in wn.all_synsets(pos) for lemma in synset.lemmas())


def synonym_rows(wn, lists: dict[str, list[str]]) -> list[str]:
    """'word<TAB>pos<TAB>syn syn ...' for each listed word whose most frequent sense has listed synonyms."""
    known = set().union(*lists.values())
    rows = []
    for pos_name, pos in (("adjectives", "a"), ("nouns", "n"), ("verbs", "v")):
        for word in sorted(lists[pos_name]):
            synonyms = []
            for synset in [s for s in wn.synsets(word, pos) if usable_synset(s)][:SYNONYM_SENSES]:
                for name in synset.lemma_names():
                    if name != word and name in known and name not in synonyms:
                        synonyms.append(name)
            if synonyms:
                rows.append(f"{word}\t{pos}\t{' '.join(synonyms[:MAX_SYNONYMS])}")
    return rows


def inflection_rows(wordnet_dir: Path, lists: dict[str, list[str]]) -> list[str]:
    """'pos<TAB>form<TAB>lemma' for the irregular forms (WordNet's noun.exc, verb.exc) of the listed words."""
    rows = []
    for pos, list_name in (("n", "nouns"), ("v", "verbs")):
        words = set(lists[list_name])
        exc = "noun.exc" if pos == "n" else "verb.exc"
        with open(wordnet_dir / exc) as f:
            for line in f:
                form, *lemmas = line.split()
                for lemma in lemmas:
                    if lemma in words and WORD.match(form) and form != lemma:
                        rows.append(f"{pos}\t{form}\t{lemma}")
    return sorted(set(rows))


def licence_notice() -> str:
    return LICENCE_HEADER + WORDNET_LICENCE


def derive(wordnet_dir: Path, size: int) -> dict[str, str]:
    """File name -> content of every file in ``clipdef/vocab``."""
    with tempfile.TemporaryDirectory() as scratch:
        wn = open_wordnet(wordnet_dir, Path(scratch))
        counts = read_tag_counts(wordnet_dir)
        lists = derive_word_lists(wn, counts, size)
        synonyms = synonym_rows(wn, lists)
    files = {f"{name}.txt": "\n".join(words) + "\n" for name, words in lists.items()}
    files["synonyms.tsv"] = "\n".join(synonyms) + "\n"
    files["inflections.tsv"] = "\n".join(inflection_rows(wordnet_dir, lists)) + "\n"
    files["LICENSE-WordNet"] = licence_notice()
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet-dir", type=Path, default=DEFAULT_WORDNET_DIR)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--size", type=int, default=3000, help="words per list")
    parser.add_argument("--check", action="store_true", help="compare with the shipped files, write nothing")
    args = parser.parse_args(argv)
    if not (args.wordnet_dir / "index.sense").exists():
        raise SystemExit(f"WordNet 3.0 files not found in {args.wordnet_dir} "
                         "(apt-get install wordnet-base wordnet-sense-index)")
    files = derive(args.wordnet_dir, args.size)
    if args.check:
        stale = [name for name, text in files.items()
                 if not (args.out / name).exists() or (args.out / name).read_text() != text]
        print("vocabularies up to date" if not stale else f"stale or missing: {', '.join(stale)}")
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text)
    print(", ".join(f"{name}: {text.count(chr(10))} lines" for name, text in files.items()))
    return 0


LICENCE_HEADER = """\
The word lists in this folder (adjectives.txt, nouns.txt, verbs.txt, synonyms.tsv, inflections.tsv) are derived
from WordNet 3.0 by scripts/derive_vocab.py. WordNet is distributed under the following licence:

"""

WORDNET_LICENCE = """\
WordNet Release 3.0

This software and database is being provided to you, the LICENSEE, by
Princeton University under the following license.  By obtaining, using
and/or copying this software and database, you agree that you have
read, understood, and will comply with these terms and conditions.:

Permission to use, copy, modify and distribute this software and
database and its documentation for any purpose and without fee or
royalty is hereby granted, provided that you agree to comply with
the following copyright notice and statements, including the disclaimer,
and that the same appear on ALL copies of the software, database and
documentation, including modifications that you make for internal
use or for distribution.

WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.

THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR
IMPLIED.  BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANT-
ABILITY OR FITNESS FOR ANY PARTICULAR PURPOSE OR THAT THE USE
OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL NOT
INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR
OTHER RIGHTS.

The name of Princeton University or Princeton may not be used in
advertising or publicity pertaining to distribution of the software
and/or database.  Title to copyright in this software, database and
any associated documentation shall at all times remain with
Princeton University and LICENSEE agrees to preserve same.
"""

if __name__ == "__main__":
    sys.exit(main())
