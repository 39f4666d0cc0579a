"""The reference scorers' NLP steps: NLTK tokenisation, WordNet noun lemmas, NLTK POS tags.

CHAIR, Object HalBench and AMBER read model text with NLTK, and each step needs NLTK *data* that
the package registries do not carry. This module reproduces each step and says, in
:func:`nlp_backends`, how exactly:

* :func:`word_tokenize` is NLTK's own ``word_tokenize`` code (Punkt sentence split, then the
  Treebank-style word tokenizer). Its English Punkt parameters come from NLTK's ``punkt_tab``
  data when installed; without them an untrained Punkt splitter is used, which differs from the
  trained one only after abbreviations and initials (``"mr. smith"``). Both give the reference's
  tokens on all 1,208 texts of the golden files.
* :func:`lemmatize_noun` is ``WordNetLemmatizer().lemmatize(word)`` (noun) with WordNet 3.0, the
  version behind the references, shipped with mmpo (``data/wordnet-3.0-*``, Princeton's licence
  in ``data/WORDNET-3.0-LICENSE``): exact, with no NLTK data.
* :func:`pos_tag` is NLTK's averaged-perceptron tagger. With NLTK's
  ``averaged_perceptron_tagger_eng`` data installed it is the reference's tagger. Without it, the
  weights of ``textblob-aptagger`` (Honnibal's 2013 model of the same design) run in NLTK's
  tagger code: a different training run, so some tags differ (10% of the golden AMBER responses
  differ in at least one tag; most differences are on words outside AMBER's vocabulary). Install
  the data for exact AMBER numbers: ``python -m nltk.downloader averaged_perceptron_tagger_eng``.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from collections.abc import Sequence
from functools import cache
from pathlib import Path

DATA = Path(__file__).parent / "data"

#: WordNet's noun detachment rules, in the order NLTK's morphy applies them.
_NOUN_SUFFIXES = (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"),
                  ("shes", "sh"), ("men", "man"), ("ies", "y"))


# ----------------------------------------------------------------------------------------- tokens

@cache
def _sentence_splitter():
    from nltk.tokenize.punkt import PunktSentenceTokenizer, PunktTokenizer

    try:
        return PunktTokenizer("english"), "punkt_tab/english (NLTK data, exact)"
    except LookupError:
        return PunktSentenceTokenizer(), "untrained Punkt (NLTK punkt_tab data not installed; differs only after abbreviations)"


@cache
def _word_tokenizer():
    from nltk.tokenize.destructive import NLTKWordTokenizer

    return NLTKWordTokenizer()


def word_tokenize(text: str) -> list[str]:
    """NLTK's ``word_tokenize(text)``: Punkt sentences, each split into Treebank-style tokens."""
    splitter, _ = _sentence_splitter()
    words = _word_tokenizer()
    return [token for sentence in splitter.tokenize(text) for token in words.tokenize(sentence)]


# ----------------------------------------------------------------------------------------- lemmas

@cache
def _wordnet_nouns() -> tuple[frozenset[str], dict[str, list[str]]]:
    with gzip.open(DATA / "wordnet-3.0-noun-lemmas.txt.gz", "rt", encoding="utf-8") as f:
        lemmas = frozenset(f.read().split())
    exceptions: dict[str, list[str]] = {}
    with gzip.open(DATA / "wordnet-3.0-noun.exc.gz", "rt", encoding="utf-8") as f:
        for line in f:
            inflected, *bases = line.split()
            exceptions[inflected] = bases
    return lemmas, exceptions


def noun_lemmas(word: str) -> list[str]:
    """Every WordNet 3.0 noun lemma of ``word``, in morphy's order (``word`` itself first if it
    is one): the exception list's bases when ``word`` is an exception, else the suffix rules'."""
    lemmas, exceptions = _wordnet_nouns()
    if word in exceptions:
        candidates = exceptions[word]
    else:
        candidates = [word[: -len(old)] + new for old, new in _NOUN_SUFFIXES if word.endswith(old)]
    return [form for form in dict.fromkeys([word, *candidates]) if form in lemmas]


def lemmatize_noun(word: str) -> str:
    """NLTK ``WordNetLemmatizer().lemmatize(word)``: the shortest noun lemma (the first of equal
    length), or ``word`` unchanged when WordNet has none. Case is kept, so ``"Dogs"`` stays."""
    found = noun_lemmas(word)
    return min(found, key=len) if found else word


# ------------------------------------------------------------------------------------------ tags

class _WeightsUnpickler(pickle.Unpickler):
    """Loads the 2013 tagger pickle (dicts, sets and strings) and refuses any other class."""

    def find_class(self, module: str, name: str):
        if module in ("builtins", "__builtin__") and name in ("set", "frozenset", "dict", "list", "tuple"):
            return {"set": set, "frozenset": frozenset, "dict": dict, "list": list, "tuple": tuple}[name]
        raise pickle.UnpicklingError(f"the tagger weights may not hold {module}.{name}")


@cache
def _tagger():
    from nltk.tag.perceptron import PerceptronTagger

    try:
        return PerceptronTagger(lang="eng"), "averaged_perceptron_tagger_eng (NLTK data, exact)"
    except LookupError:
        pass
    spec = importlib.util.find_spec("textblob_aptagger")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "POS tagging (AMBER) needs NLTK's averaged_perceptron_tagger_eng data "
            "(python -m nltk.downloader averaged_perceptron_tagger_eng) or the textblob-aptagger package "
            "(pip install textblob-aptagger)")
    path = Path(next(iter(spec.submodule_search_locations))) / "trontagger-0.1.0.pickle"
    with open(path, "rb") as f:
        weights, tagdict, classes = _WeightsUnpickler(f, encoding="latin1").load()
    tagger = PerceptronTagger(load=False)
    tagger.model.weights, tagger.tagdict = weights, tagdict
    tagger.classes = tagger.model.classes = set(classes)
    return tagger, ("textblob-aptagger trontagger-0.1.0 weights in NLTK's tagger (NLTK tagger data not installed; "
                    "tags can differ from the reference's)")


def pos_tag(tokens: Sequence[str]) -> list[tuple[str, str]]:
    """NLTK ``pos_tag(tokens)`` (Penn Treebank tags); see the module docstring for exactness."""
    tagger, _ = _tagger()
    return [(word, tag) for word, tag in tagger.tag(list(tokens))]


def nlp_backends(*, tagging: bool = False) -> dict[str, str]:
    """Which implementation runs each step and whether it is the reference's, for result files."""
    import nltk

    out = {"nltk": nltk.__version__, "tokenizer": _sentence_splitter()[1],
           "lemmatizer": "WordNet 3.0 noun morphy (shipped with mmpo, exact)"}
    if tagging:
        out["tagger"] = _tagger()[1]
    return out

