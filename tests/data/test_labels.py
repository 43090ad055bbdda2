"""What is trained: for every demo row, labels are -100 on exactly the prompt (through the assistant
header) and equal input_ids on every completion token, including the closing end-of-turn token."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, run_cli_here


@pytest.fixture(scope="module")
def demo_examples(demo_json, tiny_dir):
    res = run_cli_here("data", REPO / "recipes" / "tiny-cpu.yaml", "--json",
                  "--set", f"data.source={demo_json}", "--set", "training.max_length=4096", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_labels_mask_exactly_the_prompt(demo_examples, demo_json, tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    rows = json.loads(demo_json.read_text())
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert len(demo_examples) == 158  # 80% of the 198 demo rows, none dropped at max_length 4096
    for ex in demo_examples:
        row = rows[ex["row_id"]]
        prompt_ids = tok.apply_chat_template([{"role": "user", "content": row["Question"]}],
                                             add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        ids, labels = ex["input_ids"], ex["labels"]
        n = len(prompt_ids)
        assert ids[:n] == prompt_ids, "the prompt is not a prefix of the example"
        assert all(lab == -100 for lab in labels[:n]), "a prompt token is trained"
        assert labels[n:] == ids[n:], "a completion token is not trained"
        assert tok.decode(ids[n:]).startswith("<think>" + row["Complex_CoT"][:20])
        last_end = max(i for i, t in enumerate(ids) if t == im_end)
        assert last_end >= n and labels[last_end] == im_end, "the closing end-of-turn token is not trained"
        assert tok.decode(ids[n:last_end]).endswith(row["Response"].strip()[-20:])


def test_human_view_highlights(demo_json, tiny_dir):
    res = run_cli_here("data", REPO / "recipes" / "tiny-cpu.yaml", "--limit", "1", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "800 of 800 rows kept" in res.stdout
    assert "trained (green)" in res.stdout and "median" in res.stdout
