"""Inference, evaluation and merging of a trained tiny adapter, plus their one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from medsft.recipe.files import load_recipe
from tests.conftest import REPO, run_cli, run_cli_here

pytestmark = pytest.mark.slow  # trains the tiny model


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """tiny-cpu trained long enough to learn the format reliably (5 epochs; 3 give 0.90, 5 give 1.00)."""
    from medsft.train.run import run

    out = tmp_path_factory.mktemp("fmt-run")
    recipe = load_recipe(REPO / "recipes" / "tiny-cpu.yaml",
                         [f"output.dir={out}", "training.num_train_epochs=5", "training.eval_strategy=no",
                          "training.save_strategy=no"])
    run(recipe)
    return recipe.adapter_dir


def test_eval_format_compliance(adapter):
    res = run_cli_here("eval", adapter, "--max-generations", "20", "--max-new-tokens", "160", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((adapter.parent / "eval" / "eval.json").read_text())  # the run's eval/
    ours, base = results["adapter"], results["base"]
    fmt, base_fmt = ours["generation"]["format_compliance"], base["generation"]["format_compliance"]
    print(f"format compliance: adapter {fmt:.2f}, base {base_fmt:.2f}; "
          f"completion NLL {ours['completion']['nll']:.3f} vs base {base['completion']['nll']:.3f}")
    assert fmt >= 0.9  # measured 1.00 after 5 epochs of tiny-cpu (0.90 after 3)
    assert fmt > base_fmt  # the random base never closes a <think> block (measured 0.00)
    assert ours["completion"]["nll"] < base["completion"]["nll"] - 1.0
    assert results["delta"]["generation"]["format_compliance"] == pytest.approx(fmt - base_fmt)
    assert results["test_rows"] == 80 and ours["multiple_choice"]["n"] == 20
    assert "format_compliance" in res.stdout  # the rich table


def test_infer_batch_writes_jsonl(adapter, tmp_path):
    """Two held-out questions of the built-in data (what the tiny model learned: an out-of-distribution question
    makes its format depend on float noise in training), one long and one short."""
    from medsft.model.builtin.tiny_data import generate

    rows = generate()
    held_out = [rows[i]["Question"] for i in json.loads((adapter / "test_ids.json").read_text())]
    picked = [max(held_out, key=len), min(held_out, key=len)]
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question": q}) + "\n" for q in picked))
    out = tmp_path / "a.jsonl"
    res = run_cli_here("infer", adapter, "--file", questions, "--output", out, "--max-new-tokens", "160", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        assert set(r) >= {"question", "reasoning", "answer", "tokens", "seconds"}
        assert r["stopped"] and r["reasoning"] and r["answer"]  # stopped at <|im_end|>, split at </think>


def test_infer_single_question_streams(adapter):
    res = run_cli("infer", adapter, "--question", "A 40-year-old woman comes to the clinic with cold intolerance "
                  "and weight gain. What is the most likely diagnosis?", "--max-new-tokens", "160",
                  env={"COLUMNS": "200"}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    # piped: the generated text once (reasoning and answer), what it cost on stderr
    assert res.stdout.count("<think>") == 1 and res.stdout.count("</think>") == 1, res.stdout
    answer = res.stdout.split("</think>", 1)[1].strip()
    assert answer and res.stdout.count(answer) == 1 and " tokens, " in res.stderr


def test_merge_loads_without_peft(adapter, tmp_path, tiny_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    res = run_cli_here("merge", adapter, out, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert not list(out.glob("*.bin"))
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16)
    unmerged = PeftModel.from_pretrained(base, adapter).eval()
    ids = torch.tensor([[5, 17, 230, 99, 1000, 42, 7, 300]])
    with torch.no_grad():
        a = merged(input_ids=ids).logits.float()
        b = unmerged(input_ids=ids).logits.float()
    # Both in bf16; merging rounds W + BA into bf16 once, so logits differ at bf16 resolution (0.0156
    # at magnitude 2-4). Measured on the 5-epoch adapter: max |diff| 0.125, most entries 0-0.03.
    diff = (a - b).abs()
    assert diff.max() < 0.25 and diff.mean() < 0.03, (diff.max(), diff.mean())
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.75  # the same next-token choice (8 positions)


def test_bad_adapter_dirs(adapter, tmp_path):
    res = run_cli_here("infer", tmp_path / "missing", "--question", "q", timeout=60)
    assert res.returncode == 2 and res.stderr.startswith("error:") and "not found" in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli_here("infer", empty, "--question", "q", timeout=60)
    assert res.returncode == 2 and "has no adapter_config.json" in res.stderr

    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    res = run_cli_here("infer", broken, "--question", "q", timeout=60)
    assert res.returncode == 2 and "corrupted adapter" in res.stderr and "Traceback" not in res.stderr

    offline = tmp_path / "offline"
    shutil.copytree(adapter, offline)
    recipe = yaml.safe_load((offline / "recipe.yaml").read_text())
    recipe["model"]["name"] = "example-org/not-downloaded-8b"
    (offline / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    res = run_cli_here("infer", offline, "--question", "q", timeout=300)
    assert res.returncode == 2 and "not in this machine's hub cache" in res.stderr and "Traceback" not in res.stderr
