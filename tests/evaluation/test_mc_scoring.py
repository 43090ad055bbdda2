"""MC accuracy and format metrics from scripted generations: hand-counted expectations."""

from __future__ import annotations

import json

from medsft.data.formats import format_metrics
from medsft.evaluation.evaluate import mc_accuracy, mc_items


def scripted(texts):
    def generate(prompts):
        assert len(prompts) == len(texts)
        return [{"text": t, "stopped": True} for t in texts]
    return generate


def test_mc_accuracy_hand_counted(demo_json):
    rows = mc_items(json.loads(demo_json.read_text()))[:6]
    answers = [r["answer_idx"] for r in rows]
    wrong = lambda letter: next(x for x in "ABCDE" if x != letter and x in rows[0]["options"])  # noqa: E731
    texts = [
        f"<think>...</think>The answer is {answers[0]}.",            # right
        f"<think>...</think>{rows[1]['options'][answers[1]]}",        # right, by the option's text
        f"<think>...</think>Not {wrong(answers[2])} but {answers[2]}",  # right despite the decoy
        f"<think>...</think>The answer is {wrong(answers[3])}.",     # wrong
        "<think>never closed",                                       # no answer: wrong
        f"<think>...</think>({answers[5]})",                         # right
    ]
    result = mc_accuracy(rows, scripted(texts))
    assert result["n"] == 6
    assert result["accuracy"] == 4 / 6
    assert result["unparsed"] == 1 / 6


def test_prompts_carry_lettered_options(demo_json):
    rows = mc_items(json.loads(demo_json.read_text()))[:1]
    seen = []
    mc_accuracy(rows, lambda prompts: seen.extend(prompts) or [{"text": "A", "stopped": True}])
    for letter, option in rows[0]["options"].items():
        assert f"{letter}. {option}" in seen[0]


def test_format_metrics_hand_counted():
    records = [{"text": "<think>r</think>answer", "stopped": True},
               {"text": "<think>r</think>", "stopped": True},          # empty answer
               {"text": "<think>r never closed", "stopped": False},
               {"text": "<think>rr</think>ok", "stopped": False}]      # hit max tokens
    m = format_metrics(records)
    assert m["well_formed_think"] == 0.75
    assert m["non_empty_answer"] == 0.75  # only the second is empty (an unclosed block is all answer)
    assert m["stopped_at_end_of_turn"] == 0.5
    assert m["format_compliance"] == 0.25
