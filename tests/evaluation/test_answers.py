"""The answer extractor, table-driven: plain, hedged and misleading phrasings → letter or None, with 4-5 and
10 options, and letters inside the reasoning that must not count."""

from __future__ import annotations

import pytest

from medsft.data.formats import split_reasoning
from medsft.evaluation.answers import read_choice, read_output
from medsft.evaluation.benchmark import pose_question

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
    ("the diagnosis is a viral infection of red cell precursors", None),  # the article, not option A
    ("The answer is C. Option A would be wrong because it is benign.", "C"),  # the first statement counts
    ("Option A (a carrier state) does not explain this. The correct answer is D.", "D"),  # statements beat labels
    ("The answer is C. However, option D is also reasonable.", "C"),
    ("\\boxed{B}", "B"),
    ("C is correct.", "C"),
    ("But I think the answer is B.", "B"),  # "but I" is the pronoun
    ("The answer is F.", None),  # not one of the options
]

OPTIONS10 = {"A": "Hypothyroidism", "B": "Hyperthyroidism", "C": "Cushing syndrome", "D": "Addison disease",
             "E": "Pheochromocytoma", "F": "Acromegaly", "G": "Hyperparathyroidism", "H": "Diabetes insipidus",
             "I": "Conn syndrome", "J": "Carcinoid syndrome"}

CASES10 = [
    ("The answer is H.", "H"),
    ("Answer: (J) Carcinoid syndrome", "J"),
    ("the answer is g.", "G"),
    ("Not I but H.", "H"),
    ("I think the answer is F.", "F"),
    ("But I would choose option J.", "J"),
    ("I", "I"),
    ("**G**", "G"),
    ("H is the most likely answer.", "H"),
    ("The most likely diagnosis is diabetes insipidus.", "H"),
    ("Diabetes insipidus is unlikely; the answer is hyperparathyroidism.", "G"),
    ("Conn syndrome, not Cushing syndrome.", "I"),
    ("The correct option is E: pheochromocytoma.", "E"),
    ("Answer: K", None),
    ("I am not sure which one.", None),
    ("Excluding F and G, I pick J.", "J"),
]

PUBMEDQA = {"A": "yes", "B": "no", "C": "maybe"}


@pytest.mark.parametrize("text,expected", CASES10, ids=[f"10opt-{i:02d}" for i in range(len(CASES10))])
def test_read_choice_ten_options(text, expected):
    assert read_choice(text, OPTIONS10).first == expected


def test_option_text_matches_whole_words():
    assert read_choice("The diagnosis remains uncertain; maybe.", PUBMEDQA).first == "C"  # "no" in "diagnosis"
    assert read_choice("Yes, the trial supports it.", PUBMEDQA).first == "A"


REASONING = [  # (whole output, options, choice, how): only the answer after the reasoning is read
    ("<think>Option A looks right. The answer is A.</think>The answer is D.", OPTIONS, "D", "statement"),
    ("<think>H? J? The answer is J.</think>Answer: (H)", OPTIONS10, "H", "statement"),
    ("## Thinking\n\nThe answer is B, or C.\n\n## Final Response\n\nThe answer is E.", OPTIONS, "E", "statement"),
    ("## Thinking\n\nThe answer is B.\n\n## Final Response\n\nParvovirus B19 infection.", OPTIONS, "D", "text"),
    ("<think>The answer is C and nothing else, so", OPTIONS, None, "unclosed"),
    ("## Thinking\n\nThe answer is C", OPTIONS, None, "unclosed"),
    ("<think>The answer is C.</think>", OPTIONS, None, "none"),
    ("reasoning without a start tag</think>The answer is (B).", OPTIONS, "B", "statement"),
    ("No reasoning block at all. Answer: C", OPTIONS, "C", "statement"),
    ("", OPTIONS, None, "none"),
]


@pytest.mark.parametrize("text,options,choice,how", REASONING, ids=[f"r{i}" for i in range(len(REASONING))])
def test_read_output_reads_after_the_reasoning(text, options, choice, how):
    reading = read_output(text, options)
    assert (reading.first, reading.how) == (choice, how)


def test_first_and_last_statements():
    r = read_choice("The answer is C. Some say the answer is A.", OPTIONS)
    assert (r.first, r.last, r.how) == ("C", "A", "statement")
    r = read_choice("I first thought the answer is A, but on reflection the answer is E.", OPTIONS)
    assert (r.first, r.last) == ("E", "E")


@pytest.mark.parametrize("text,expected", CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_read_choice(text, expected):
    assert read_choice(text, OPTIONS).first == expected


def test_split_reasoning():
    p = split_reasoning("<think>low retic count</think>The answer is D.")
    assert (p.reasoning, p.answer, p.well_formed) == ("low retic count", "The answer is D.", True)
    assert not split_reasoning("<think>never closed").well_formed
    assert not split_reasoning("no think at all").well_formed
    assert split_reasoning("reasoning</think>answer").answer == "answer"


def test_medsft_prompt_lists_options_in_order():
    text = pose_question(" Which? ", {"B": "two", "A": "one"}, "medsft")
    assert text == "Which?\n\nA. one\nB. two\n\nAnswer with the letter of the correct option."
    assert text.index("A. one") < text.index("B. two") and text.startswith("Which?")
