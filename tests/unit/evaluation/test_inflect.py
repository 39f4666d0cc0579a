"""Pattern 3.6 ``singularize``, pinned by the reference outputs behind LisaAnne's CHAIR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmpo.evaluation.inflect import IE_WORDS, IRREGULAR, UNCOUNTABLE, UNINFLECTED, singularize

FIXTURES = Path(__file__).parents[2] / "fixtures" / "reference" / "chair"


def test_every_reference_word_form():
    """All 1417 tokens of word_forms.json: caption tokens, synonym words and their plurals."""
    forms = json.loads((FIXTURES / "word_forms.json").read_text())
    assert len(forms) == 1417
    wrong = [(f["token"], f["singularize"], singularize(f["token"])) for f in forms
             if singularize(f["token"]) != f["singularize"]]
    assert wrong == []


@pytest.mark.parametrize("part", ["with_captions", "instances_only"])
def test_every_singular_field_of_the_golden_captions(part):
    n = 0
    for line in (FIXTURES / f"chair_per_caption.{part}.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert [singularize(t) for t in row["tokens"]] == row["singular"], row["caption"]
        n += len(row["tokens"])
    assert n > 1000


@pytest.mark.parametrize(("word", "singular"), [
    # hyphenated compounds: only a preposition second part makes the first part the head
    ("mothers-in-law", "mother-in-law"), ("hot-dogs", "hot-dog"), ("close-up", "close-up"),
    ("dogs'", "dog's"),                                       # trailing apostrophe
    # suffix-of test against the uninflected / uncountable lists
    ("scissors", "scissors"), ("species", "species"), ("series", "series"), ("debris", "debris"),
    ("luggage", "luggage"), ("rice", "rice"), ("water", "water"), ("equipment", "equipment"),
    ("is", "is"), ("ice", "ice"), ("ears", "ears"), ("ings", "ings"), ("sheep", "sheep"), ("a", "a"),
    ("cookies", "cookies"), ("doggies", "doggies"), ("collies", "collies"),    # -ie words
    # irregular plurals, as suffixes
    ("men", "man"), ("women", "woman"), ("policemen", "policeman"), ("people", "person"),
    ("children", "child"), ("oxen", "ox"), ("geese", "goose"), ("teeth", "tooth"), ("leaves", "leaf"),
    ("feet", "foot"), ("four", "fmy"), ("your", "ymy"), ("taxes", "taxe"), ("shelves", "shelve"),
    # ordered suffix rules
    ("bus", "bu"), ("glass", "glas"), ("grass", "gras"), ("tennis", "tenni"), ("sports", "sport"),
    ("this", "thi"), ("has", "ha"), ("skis", "ski"), ("airbus", "airbu"), ("minibus", "minibu"),
    ("buses", "bus"), ("glasses", "glass"), ("boxes", "box"), ("benches", "bench"), ("dishes", "dish"),
    ("puppies", "puppy"), ("ties", "ty"), ("neckties", "neckty"), ("ponies", "pony"),
    ("knives", "knife"), ("calves", "calf"), ("drives", "drife"), ("wolves", "wolf"), ("scarves", "scarf"),
    ("gloves", "glove"), ("stoves", "stove"), ("olives", "olife"),
    ("mice", "mouse"), ("slice", "slouse"), ("pasta", "pastum"), ("cattle", "cattle"),
    ("tomatoes", "tomato"), ("potatoes", "potato"), ("shoes", "shoe"), ("horses", "horse"),
    ("vases", "vase"), ("noses", "nose"), ("bases", "basis"), ("safari", "safarus"), ("taxi", "taxi"),
    ("broccoli", "broccoli"), ("umbrellas", "umbrella"), ("giraffes", "giraffe"), ("zebras", "zebra"),
    ("sandwiches", "sandwich"), ("frisbees", "frisbee"), ("", ""),
])
def test_pattern_behaviour_with_its_quirks(word, singular):
    assert singularize(word) == singular


def test_word_lists_hold_the_listed_entries():
    assert {"scissors", "species", "series", "debris"} <= UNINFLECTED and "sheep" not in UNINFLECTED
    assert {"luggage", "rice", "water", "equipment"} <= UNCOUNTABLE
    assert {"cookie", "doggie", "collie", "^tie"} <= IE_WORDS
    assert IRREGULAR["our"] == "my" and IRREGULAR["men"] == "man"


@given(st.text(max_size=30))
def test_any_text_gives_a_string(word):
    assert isinstance(singularize(word), str)
