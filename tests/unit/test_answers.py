"""The answer extractor, table-driven: plain, hedged and misleading phrasings → letter or None."""

from __future__ import annotations

import pytest

from medsft.answers import extract_choice, mc_prompt
from medsft.formats import split_reasoning

OPTIONS = {"A": "Benign genetic carrier condition", "B": "Folate deficiency", "C": "Iron deficiency",
           "D": "Parvovirus B19 infection", "E": "Vitamin B12 deficiency"}

CASES = [
    ("The answer is C", "C"),
    ("the answer is c.", "C"),
    ("Answer: D", "D"),
    ("C.", "C"),
    ("(C)", "C"),
    ("**B**", "B"),
    ("Option C: Iron deficiency", "C"),
    ("I would choose option E.", "E"),
    ("The correct choice is (A).", "A"),
    ("Final answer: [B]", "B"),
    ("D) Parvovirus B19 infection", "D"),
    ("Not A but C.", "C"),
    ("The answer is not A but C", "C"),
    ("A is wrong; the answer is D.", "D"),
    ("It is C, not A.", "C"),
    ("Rather than B, I pick D", "D"),
    ("I first thought the answer is A, but on reflection the answer is E.", "E"),
    ("A 45-year-old man with anemia: the most likely diagnosis is parvovirus B19 infection.", "D"),
    ("Cardiac causes are unlikely here.", None),
    ("Because of the low reticulocyte count, this is aplastic crisis.", None),
    ("The most likely diagnosis is Parvovirus B19 infection.", "D"),
    ("This is vitamin b12 deficiency.", "E"),
    ("Not folate deficiency but iron deficiency.", "C"),
    ("Iron deficiency is unlikely; the diagnosis is Folate deficiency", "B"),
    ("", None),
    ("I am not sure.", None),
    ("B", "B"),
    ("  e ", "E"),
    ("A. Benign genetic carrier condition", "A"),
    ("Both A and B are wrong. Answer - C", "C"),
    ("The answer would be option (D)", "D"),
    ("Excluding C, the best option is B.", "B"),
    ("Considering everything, D.", "D"),
    ("Antibodies and Bone marrow findings point to Erythroid aplasia.", None),
    ("**Answer:** E", "E"),
]


@pytest.mark.parametrize("text,expected", CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_extract_choice(text, expected):
    assert extract_choice(text, OPTIONS) == expected


def test_table_size():
    print(f"answer extractor: {len(CASES)} phrasings")
    assert len(CASES) >= 30


def test_split_reasoning():
    p = split_reasoning("<think>low retic count</think>The answer is D.")
    assert (p.reasoning, p.answer, p.well_formed) == ("low retic count", "The answer is D.", True)
    assert not split_reasoning("<think>never closed").well_formed
    assert not split_reasoning("no think at all").well_formed
    assert split_reasoning("reasoning</think>answer").answer == "answer"


def test_mc_prompt_lists_options_in_order():
    text = mc_prompt("Which?", {"B": "two", "A": "one"})
    assert text.index("A. one") < text.index("B. two") and text.startswith("Which?")
