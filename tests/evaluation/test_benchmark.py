"""`medsft score` on hand-written generations (exact accuracy, hand-counted), the benchmark file
layouts, the published-figure matching, the batch plan, and every bad file as one line with exit 2."""

from __future__ import annotations

import importlib.util
import json
import random

import pytest

from medsft.evaluation.benchmark import Item, pose, read_benchmark, read_benchmarks
from medsft.evaluation.generate import length_sorted_batches
from medsft.evaluation.report import published_for
from tests.conftest import run_cli, run_cli_here

OPT4 = {"A": "Benign genetic carrier condition", "B": "Folate deficiency", "C": "Iron deficiency",
        "D": "Parvovirus B19 infection"}
OPT10 = {"A": "Hypothyroidism", "B": "Hyperthyroidism", "C": "Cushing syndrome", "D": "Addison disease",
         "E": "Pheochromocytoma", "F": "Acromegaly", "G": "Hyperparathyroidism", "H": "Diabetes insipidus",
         "I": "Conn syndrome", "J": "Carcinoid syndrome"}
YESNO = {"A": "yes", "B": "no", "C": "maybe"}
R = "<think>Option A fits the anemia, but the answer is not B; maybe C.</think>"  # distractor letters

# (source, options, answer_idx, generated output, the choice medsft must read, how)
SCRIPT = [
    ("MedQA_USLME_test", OPT4, "D", f"{R}The answer is D.", "D", "statement"),
    ("MedQA_USLME_test", OPT4, "D", "<think>The answer is A? Let me check.</think>Answer: D", "D", "statement"),
    ("MedQA_USLME_test", OPT4, "D", "## Thinking\n\nB or C?\n\n## Final Response\n\nThe answer is D.", "D",
     "statement"),
    ("MedQA_USLME_test", OPT4, "D", "## Thinking\n\nThe answer is D.\n\n## Final Response\n\nThe answer is B.", "B",
     "statement"),
    ("MedQA_USLME_test", OPT4, "D", "", None, "none"),
    ("MedQA_USLME_test", OPT4, "D", "   \n", None, "none"),
    ("MedQA_USLME_test", OPT4, "D", "<think>The answer is D, because", None, "unclosed"),
    ("MedQA_USLME_test", OPT4, "D", "## Thinking\n\nThe answer is D", None, "unclosed"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}", None, "none"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}Not A but D.", "D", "statement"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}A is wrong; the answer is D.", "D", "statement"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}It is D, not C.", "D", "statement"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}The answer is D. Option A would be wrong here.", "D", "statement"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}Option A (a carrier) does not fit. The correct answer is D.", "D",
     "statement"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}The most likely diagnosis is parvovirus B19 infection.", "D", "text"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}Not folate deficiency but parvovirus B19 infection.", "D", "text"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}\\boxed{{D}}", "D", "statement"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}**Answer:** D", "D", "statement"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}(D)", "D", "statement"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}I first thought the answer is A, but on reflection the answer is D.", "D",
     "statement"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}The answer is C. However, option D is also reasonable.", "C", "statement"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}I would choose option B.", "B", "statement"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}Rather than A, I pick D", "D", "statement"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}The answer is E.", None, "none"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}Answer: d.", "D", "statement"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}the diagnosis is a viral infection of red cell precursors", None, "none"),
    ("MedQA_USLME_test", OPT4, "D", "Let's go through them. A fits poorly. The answer is D.", "D", "statement"),
    ("MedQA_USLME_test", OPT4, "D", "reasoning after a template's <think></think>The answer is D.", "D", "statement"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}Considering everything, D.", "D", "label"),
    ("MedQA_USLME_test", OPT4, "D", f"{R}Option D: Parvovirus B19 infection", "D", "label"),
    ("MMLU-Pro_Medical_test", OPT10, "H", "<think>A, B and C are out. The answer is J?</think>The answer is H.", "H",
     "statement"),
    ("MMLU-Pro_Medical_test", OPT10, "H", f"{R}Answer: (H) Diabetes insipidus", "H", "statement"),
    ("MMLU-Pro_Medical_test", OPT10, "H", f"{R}The answer is J.", "J", "statement"),
    ("MMLU-Pro_Medical_test", OPT10, "H", f"{R}The most likely diagnosis is diabetes insipidus.", "H", "text"),
    ("MMLU-Pro_Medical_test", OPT10, "H", f"{R}Not I but H.", "H", "statement"),
    ("MMLU-Pro_Medical_test", OPT10, "H", f"{R}But I think the answer is H.", "H", "statement"),
    ("MMLU-Pro_Medical_test", OPT10, "H", f"{R}**H**", "H", "statement"),
    ("MMLU-Pro_Medical_test", OPT10, "H", "## Thinking\n\nF (acromegaly) or G?\n\n## Final Response\n\nThe correct "
     "option is H: diabetes insipidus.", "H", "statement"),
    ("MMLU-Pro_Medical_test", OPT10, "H", f"{R}I", "I", "statement"),
    ("MMLU-Pro_Medical_test", OPT10, "H", f"{R}H is correct.", "H", "statement"),
    ("MMLU-Pro_Medical_test", OPT10, "H", f"{R}Diabetes insipidus is unlikely; the answer is hyperparathyroidism.",
     "G", "text"),
    ("MMLU-Pro_Medical_test", OPT10, "H", f"{R}Answer: K", None, "none"),
    ("MMLU-Pro_Medical_test", OPT10, "H", "", None, "none"),
    ("PubMedQA_test", YESNO, "A", f"{R}Yes, the evidence supports it.", "A", "text"),
    ("PubMedQA_test", YESNO, "A", f"{R}The answer is B.", "B", "statement"),
    ("PubMedQA_test", YESNO, "A", f"{R}The diagnosis remains uncertain; maybe.", "C", "text"),
    ("PubMedQA_test", YESNO, "A", f"{R}The answer is A.", "A", "statement"),
]


def write_script(tmp_path, script=SCRIPT):
    bench, pred = tmp_path / "bench.jsonl", tmp_path / "pred.jsonl"
    bench.write_text("".join(json.dumps({"question": f"Question {i}: which one?", "options": opts, "answer_idx": ans,
                                         "source": src}) + "\n" for i, (src, opts, ans, *_) in enumerate(script)))
    pred.write_text("".join(json.dumps({"output": out}) + "\n" for _, _, _, out, *_ in script))
    return bench, pred


def expected(rows) -> dict:
    return {"accuracy": sum(r[4] == r[2] for r in rows) / len(rows), "n": len(rows),
            "no_answer": sum(r[5] in ("none", "unclosed") for r in rows),
            "text_fallback": sum(r[5] == "text" for r in rows),
            "unclosed_reasoning": sum(r[5] == "unclosed" for r in rows)}


def test_score_hand_written_predictions(tmp_path):
    bench, pred = write_script(tmp_path)
    out = tmp_path / "report"
    res = run_cli_here("score", bench, "--predictions", pred, "--output-dir", out, env={"COLUMNS": "160"}, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads((out / "benchmark.json").read_text())
    got = {k: doc["overall"][k] for k in expected(SCRIPT)}
    assert got == expected(SCRIPT)
    assert got["accuracy"] == 30 / 47 and got["no_answer"] == 9 and got["text_fallback"] == 6  # hand-counted
    for source in ("MedQA_USLME_test", "MMLU-Pro_Medical_test", "PubMedQA_test"):
        rows = [r for r in SCRIPT if r[0] == source]
        assert {k: doc["by_source"][source][k] for k in expected(rows)} == expected(rows), source
        assert (out / f"accuracy-{source}.png").stat().st_size > 1000
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [(s["choices"][0], s["how"][0]) for s in scores] == [(r[4], r[5]) for r in SCRIPT]
    assert doc["settings"]["samples"] == 1 and doc["settings"]["predictions"] == str(pred)
    # HuatuoGPT-o1's scorer takes the better of first and last match: never below ours
    assert doc["overall"]["best_of_first_last"] >= doc["overall"]["accuracy"]
    # the table, and the published rows beside ours for the two sources the paper's Table 1 covers
    assert "MMLU-Pro_Medical_test" in res.stdout and "overall" in res.stdout
    assert "published: HuatuoGPT-o1-8B" in res.stdout and "72.6" in res.stdout and "79.2" in res.stdout
    assert set(doc["published"]["by_source"]) == {"MedQA_USLME_test", "PubMedQA_test"}
    print(f"score: {len(SCRIPT)} scripted generations, accuracy {got['accuracy']:.4f} exactly as hand-counted")


def test_score_several_samples_per_item(tmp_path):
    bench, _ = write_script(tmp_path, SCRIPT[:2])
    pred = tmp_path / "samples.jsonl"
    pred.write_text(json.dumps({"outputs": ["The answer is D.", "The answer is A.", ""]}) + "\n"
                    + json.dumps({"outputs": ["D", "D", "D"]}) + "\n")
    res = run_cli_here("score", bench, "--predictions", pred, "--output-dir", tmp_path / "r", timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads((tmp_path / "r" / "benchmark.json").read_text())
    assert doc["overall"]["accuracy"] == 4 / 6 and doc["overall"]["generations"] == 6
    assert doc["overall"]["no_answer"] == 1 and doc["settings"]["samples"] == 3


def test_report_directory_is_rewritten_only_if_ours(tmp_path):
    bench, pred = write_script(tmp_path, SCRIPT[:3])
    out = tmp_path / "report"
    for _ in range(2):  # the second run replaces the first's report
        assert run_cli_here("score", bench, "--predictions", pred, "--output-dir", out, timeout=120).returncode == 0
    assert (out / "benchmark.json").is_file()


def test_file_layouts(tmp_path):
    item = {"question": "q?", "options": {"A": "x", "B": "y"}, "answer_idx": "B"}
    huatuo = tmp_path / "eval_data.json"  # HuatuoGPT-o1's evaluation/data/eval_data.json: {source: [items]}
    huatuo.write_text(json.dumps({"MedQA_USLME_test": [item, item], "PubMedQA_test": [item]}))
    assert [i.source for i in read_benchmark(huatuo)] == ["MedQA_USLME_test"] * 2 + ["PubMedQA_test"]
    plain = tmp_path / "my-bench.json"
    plain.write_text(json.dumps([item, {**item, "source": "other"}]))
    assert [i.source for i in read_benchmark(plain)] == ["my-bench", "other"]  # missing source → the file name
    one_line = tmp_path / "one.jsonl"
    one_line.write_text(json.dumps(item) + "\n")
    assert len(read_benchmark(one_line)) == 1
    assert [i.source for i in read_benchmarks([huatuo, plain], limit=1)] == ["MedQA_USLME_test", "PubMedQA_test",
                                                                             "my-bench", "other"]


def test_demo_file_is_a_benchmark(demo_json):
    items = read_benchmark(demo_json)
    assert len(items) == 198 and {i.source for i in items} == {"medical-o1-demo"}
    assert {len(i.options) for i in items} == {4, 5}


def test_prompts_pose_every_option():
    item = Item("  Which one?  ", {"B": "two", "A": "one", "J": "ten"}, "A", "s")
    assert pose(item) == "Please answer the following multiple-choice question:\nWhich one?\nA. one\nB. two\nJ. ten"
    assert pose(item, "huatuo-strict").startswith("Please answer the following multiple-choice questions, ensuring")
    assert pose(item, "medsft") == "Which one?\n\nA. one\nB. two\nJ. ten\n\nAnswer with the letter of the correct option."


def test_published_figures_match_by_name_and_option_count():
    def items(source, n_options):
        return [Item("q", {chr(65 + k): str(k) for k in range(n_options)}, "A", source)]

    assert set(published_for(items("MedQA_USLME_test", 4))) == {"MedQA_USLME_test"}
    assert published_for(items("medqa_4options", 4))["medqa_4options"]["models"]["HuatuoGPT-o1-8B"] == 0.726
    assert published_for(items("MedQA_5options", 5)) == {}  # the paper's MedQA is the 4-option set
    assert published_for(items("PubMedQA_test", 3))["PubMedQA_test"]["benchmark"] == "PubMedQA (test)"
    medmcqa = published_for(items("MedMCQA_validation", 4))["MedMCQA_validation"]
    assert medmcqa["models"]["Llama-3.1-8B-Instruct"] == 0.56
    assert published_for(items("GPQA_Medical_test", 4)) == {}  # no figure given for it: none shown


def test_batches_are_length_sorted_and_dealt_whole():
    rng = random.Random(0)
    lengths = [rng.randint(5, 500) for _ in range(103)]
    batches = length_sorted_batches(lengths, 8)
    assert sorted(i for b in batches for i in b) == list(range(103))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True) and all(len(b) == 8 for b in batches[:-1])
    # ranks take whole batches round-robin: the same batches, whatever the number of processes
    for world in (1, 2, 3):
        dealt = [b for rank in range(world) for _, b in list(enumerate(batches))[rank::world]]
        assert sorted(map(tuple, dealt)) == sorted(map(tuple, batches))


def one_line_error(res, expected: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout[-1000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and " — " in lines[0], res.stderr
    assert expected in lines[0], lines[0]


GOOD = {"question": "q?", "options": {"A": "x", "B": "y", "C": "z", "D": "w"}, "answer_idx": "B"}
BAD_FILES = {  # name: (benchmark file text, predictions file text, expected words)
    "benchmark not JSON": ("this is not json\n", '{"output": "A"}\n', "neither JSON nor JSONL (line 1"),
    "benchmark empty": ("", '{"output": "A"}\n', "has no items"),
    "item without options": (json.dumps({**GOOD, "options": None}), '{"output": "A"}\n', "item 1 has no options"),
    "item with one option": (json.dumps({**GOOD, "options": {"B": "y"}}), '{"output": "A"}\n', "has no options"),
    "unknown answer letter": (json.dumps({**GOOD, "answer_idx": "E"}), '{"output": "A"}\n',
                              "answer_idx 'E', not one of its options A, B, C, D"),
    "answer letter missing": (json.dumps({k: v for k, v in GOOD.items() if k != "answer_idx"}), '{"output": "A"}\n',
                              "answer_idx None"),
    "option key not a letter": (json.dumps({**GOOD, "options": {"1": "x", "2": "y"}}), '{"output": "A"}\n',
                                "option key '1'"),
    "item not an object": ("[1, 2]", '{"output": "A"}\n', "item 1 is not a JSON object"),
    "no question": (json.dumps({**GOOD, "question": ""}), '{"output": "A"}\n', "no 'question' string"),
    "predictions not JSON": (json.dumps(GOOD), "output: A\n", "neither JSON nor JSONL"),
    "predictions too few": (json.dumps([GOOD, GOOD]), '{"output": "A"}\n', "has 1 predictions for 2 benchmark items"),
    "predictions too many": (json.dumps([GOOD]), '{"output": "A"}\n{"output": "B"}\n',
                             "has 2 predictions for 1 benchmark items"),
    "prediction without output": (json.dumps(GOOD), '{"text": "A"}\n', "prediction 1 has no 'output' string"),
    "prediction of another item": (json.dumps(GOOD), '{"output": "A", "question": "other?"}\n',
                                   "belongs to another item"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files_are_one_line(name, tmp_path):
    bench_text, pred_text, words = BAD_FILES[name]
    (tmp_path / "bench.json").write_text(bench_text)
    (tmp_path / "pred.jsonl").write_text(pred_text)
    res = run_cli_here("score", "bench.json", "--predictions", "pred.jsonl", cwd=tmp_path, timeout=60)
    one_line_error(res, words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "pred.jsonl"], "a failed score wrote files"


def test_bad_paths_are_one_line(tmp_path):
    (tmp_path / "bench.json").write_text(json.dumps(GOOD))
    (tmp_path / "pred.jsonl").write_text('{"output": "B"}\n')
    one_line_error(run_cli_here("score", "missing.json", "--predictions", "pred.jsonl", cwd=tmp_path), "not found")
    one_line_error(run_cli_here("score", "bench.json", "--predictions", "nope.jsonl", cwd=tmp_path), "not found")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    one_line_error(run_cli_here("score", "bench.json", "--predictions", "pred.jsonl", "--output-dir", "mine", cwd=tmp_path),
                   "holds files medsft did not write")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


@pytest.fixture
def fake(tmp_path):
    from tests.cases import fake_adapter

    fake_adapter(tmp_path / "adapter")
    (tmp_path / "bench.json").write_text(json.dumps(GOOD))
    return tmp_path


EVAL_FLAGS = {  # checked before any model loads
    "greedy with temperature": (["--benchmark", "bench.json", "--greedy", "--temperature", "0.3"], "--greedy cannot"),
    "greedy samples": (["--benchmark", "bench.json", "--greedy", "--samples", "3"], "3 identical answers"),
    "zero samples": (["--benchmark", "bench.json", "--samples", "0"], "--samples must be at least 1"),
    "negative seed": (["--benchmark", "bench.json", "--seed", "-1"], "--seed must be at least 0"),
    "seed without benchmark": (["--seed", "3"], "--seed applies to benchmarks only"),
    "bad benchmark": (["--benchmark", "missing.json"], "benchmark file 'missing.json' not found"),
    "zero new tokens": (["--benchmark", "bench.json", "--max-new-tokens", "0"], "--max-new-tokens must be positive"),
}
if importlib.util.find_spec("vllm") is None:  # the GPU-only engine, absent on CPU machines
    EVAL_FLAGS["vllm missing"] = (["--benchmark", "bench.json", "--engine", "vllm"], "vLLM is not installed")


@pytest.mark.parametrize("name", EVAL_FLAGS)
def test_bad_eval_benchmark_flags(name, fake):
    args, words = EVAL_FLAGS[name]
    one_line_error(run_cli("eval", "adapter", *args, cwd=fake, timeout=120), words)
