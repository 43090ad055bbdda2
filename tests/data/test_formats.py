"""data.format: `huatuo` (the authors' headings) and `messages` (OpenAI or ShareGPT conversations, loss on every
assistant turn and its end-of-turn token, nothing else), on the demo rows."""

from __future__ import annotations

import json

import pytest

from medsft.data.formats import conversation
from tests.conftest import REPO, run_cli_here
from tests.template_fixtures import SYSTEM, conversations, turn_spans

# ---------------------------------------------------------------- huatuo


def test_huatuo_labels_start_at_thinking(demo_json, tiny_dir):
    """Every trained span of the demo rows is the authors' layout: it starts at `## Thinking`, holds
    `## Final Response` before the response, and ends with the end-of-turn token."""
    from transformers import AutoTokenizer

    res = run_cli_here("data", REPO / "recipes" / "tiny-cpu.yaml", "--json", "--set", f"data.source={demo_json}",
                  "--set", "data.format=huatuo", "--set", "training.max_length=4096", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    rows = json.loads(demo_json.read_text())
    examples = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(examples) == 158
    for ex in examples:
        first = next(i for i, lab in enumerate(ex["labels"]) if lab != -100)
        trained = tok.decode(ex["input_ids"][first:])
        row = rows[ex["row_id"]]
        assert trained.startswith("## Thinking\n\n" + row["Complex_CoT"][:30])
        assert f"\n\n## Final Response\n\n{row['Response'].strip()[:30]}" in trained
        assert trained.endswith("<|im_end|>\n")
        assert all(lab == -100 for lab in ex["labels"][:first])
        assert ex["labels"][first:] == ex["input_ids"][first:]


def test_huatuo_metrics_and_choice_read_final_response(demo_json):
    """Format metrics and the multiple-choice extractor read the answer after `## Final Response`."""
    from medsft.data.formats import completion_text, format_metrics, split_reasoning
    from medsft.evaluation.evaluate import mc_accuracy, mc_items

    rows = json.loads(demo_json.read_text())
    items = mc_items(rows)[:5]
    assert items
    good = [completion_text("Weighing " + ", ".join(item["options"]) + ".", f"The answer is {item['answer_idx']}.",
                            "huatuo") for item in items]
    records = [{"text": t, "stopped": True} for t in good]
    metrics = format_metrics(records, None, "huatuo")
    assert metrics["well_formed_think"] == metrics["format_compliance"] == 1.0
    assert split_reasoning(good[0], "huatuo").answer == f"The answer is {items[0]['answer_idx']}."
    assert format_metrics([{"text": "## Thinking\n\nno answer heading", "stopped": True}], None,
                          "huatuo")["format_compliance"] == 0
    assert mc_accuracy(items, lambda prompts: records, fmt="huatuo")["accuracy"] == 1.0
    # the reasoning names other letters; only the Final Response counts
    wrong = [{"text": completion_text(f"The answer is {item['answer_idx']}.", "The answer is Z.", "huatuo"),
              "stopped": True} for item in items]
    assert mc_accuracy(items, lambda prompts: wrong, fmt="huatuo")["accuracy"] == 0.0


# ---------------------------------------------------------------- messages: reading conversations


def test_conversation_reads_openai_and_sharegpt():
    openai = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    share = [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    assert conversation(openai) == (openai, None)
    assert conversation(share) == (openai, None)
    assert conversation([{"from": "doctor", "value": "q"}, {"from": "bot", "value": "a"}],
                        {"doctor": "user", "bot": "assistant"})[0] == openai[1:]


@pytest.mark.parametrize("turns, problem", [
    ("text", "conversation not a list"),
    ([], "empty conversation"),
    ([{"role": "user", "content": "q"}], "no assistant turn"),
    ([{"role": "assistant", "content": "a"}], "no user turn"),
    ([{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}], "unknown role 'bot'"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}], "empty assistant turn"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": None}], "non-string assistant turn"),
    ([{"role": "user", "content": "q"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}],
     "system turn after the first"),
    ([{"speaker": "user", "text": "q"}], "turn without role/content (or from/value)"),
    (["q", "a"], "turn not a mapping"),
])
def test_conversation_problems(turns, problem):
    assert conversation(turns) == (None, problem)


def test_bad_conversations_are_dropped_and_counted():
    from datasets import Dataset

    from medsft.data.load import to_prompt_completion
    from medsft.errors import MedsftError
    from medsft.recipe.data_section import DataSection

    good = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
            for i in range(39)]
    rows = good + [{"messages": [{"role": "user", "content": "q"}]}]
    ds, report = to_prompt_completion(Dataset.from_list(rows), DataSection(format="messages"))
    assert (report.total, report.kept) == (40, 39) and report.reasons == {"no assistant turn": 1}
    assert ds.column_names == ["row_id", "messages"] and ds[0]["messages"][0] == {"role": "user", "content": "q0"}
    with pytest.raises(MedsftError, match="1 no assistant turn"):
        to_prompt_completion(Dataset.from_list(rows), DataSection(format="messages", max_bad_fraction=0.01))


def test_system_prompt_joins_conversations_without_one():
    from datasets import Dataset

    from medsft.data.load import to_prompt_completion
    from medsft.recipe.data_section import DataSection

    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            {"messages": [{"role": "system", "content": "own"}, {"role": "user", "content": "q"},
                          {"role": "assistant", "content": "a"}]}]
    ds, _ = to_prompt_completion(Dataset.from_list(rows), DataSection(format="messages", system_prompt="Be careful."))
    assert ds[0]["messages"][0] == {"role": "system", "content": "Be careful."}
    assert ds[1]["messages"][0] == {"role": "system", "content": "own"}


# ---------------------------------------------------------------- messages: what is trained


@pytest.mark.parametrize("sharegpt", [False, True], ids=["openai", "sharegpt"])
def test_multi_turn_labels_token_by_token(sharegpt, demo_json, tiny_dir, tmp_path):
    """`medsft data --json` on conversations of 3 assistant turns (every demo row): each assistant turn's
    tokens and its closing <|im_end|> (and newline) are labelled, every system/user token and every
    `<|im_start|>assistant` cue is -100."""
    from transformers import AutoTokenizer

    rows = json.loads(demo_json.read_text())
    convs = conversations(rows, sharegpt=sharegpt)
    path = tmp_path / "conv.json"
    path.write_text(json.dumps(convs))
    res = run_cli_here("data", REPO / "recipes" / "tiny-cpu.yaml", "--json", "--set", f"data.source={path}",
                  "--set", "data.format=messages", "--set", "training.max_length=16384", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    examples = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(examples) == 158
    for ex in examples:
        ids, labels = ex["input_ids"], ex["labels"]
        spans = turn_spans(tok, ids, "<|im_start|>", "\n")
        assert [s[0] for s in spans] == ["system"] + ["user", "assistant"] * 3
        assistant_texts = [m.get("content", m.get("value")) for m in convs[ex["row_id"]].get(
            "messages", convs[ex["row_id"]].get("conversations"))][2::2]
        for role, start, content, end in spans:
            if role == "assistant":
                assert labels[start:content] == [-100] * (content - start), "the assistant cue is trained"
                assert labels[content:end] == ids[content:end], "an assistant token is not trained"
                assert ids[end - 2] == im_end and tok.decode(ids[end - 1:end]) == "\n"
                assert tok.decode(ids[content:end]) == assistant_texts.pop(0) + "<|im_end|>\n"
            else:
                assert labels[start:end] == [-100] * (end - start), f"a {role} token is trained"
        assert not assistant_texts
    assert SYSTEM in tok.decode(examples[0]["input_ids"])


@pytest.mark.slow
def test_data_view_shows_each_format(demo_json, tmp_path):
    """`medsft data` highlights the trained spans of every format: think, huatuo, a conversation."""
    rows = json.loads(demo_json.read_text())[:40]
    path = tmp_path / "conv.json"
    path.write_text(json.dumps(conversations(rows)))
    for source, fmt in ((demo_json, "think"), (demo_json, "huatuo"), (path, "messages")):
        res = run_cli_here("data", REPO / "recipes" / "tiny-cpu.yaml", "--limit", "1", "--set", f"data.source={source}",
                      "--set", f"data.format={fmt}", "--set", "training.max_length=16384", timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "trained (green)" in res.stdout
        assert {"think": "</think>", "huatuo": "## Final Response", "messages": "assistant"}[fmt] in res.stdout
