"""Evaluation on the new surfaces: answer extraction in linear time on adversarial outputs, benchmark
charts one per source under bounded names, `--max-generations` honoured by benchmarks, adapters that
travel without their training data, and the held-out split's own inputs refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from medsft.evaluation.answers import read_output
from medsft.evaluation.benchmark import Item, score
from medsft.evaluation.report import chart_names
from tests.cases import check_one_line_error, fake_adapter, recipe_with, run_case, snapshot
from tests.conftest import REPO, run_cli_here

OPTIONS = {"A": "iron deficiency anemia", "B": "parvovirus B19 infection", "C": "lead poisoning", "D": "thalassemia"}
N = 50_000  # a cubic (or quadratic) scan of this many characters would not finish in hours

# output after the reasoning -> (choice, how it was read); each is a run that once re-scanned itself
ADVERSARIAL = {
    "blank lines, then the answer": ("\n" * N + "The answer is C.", ("C", "statement")),
    "paired blank lines after a keyword": ("Answer" + "\n\n" * N + "x", (None, "none")),
    "only blank lines between words": ("x" + "\n" * N + "y", (None, "none")),
    "spaces after 'answer:'": ("answer:" + " " * N + "B", ("B", "statement")),
    "spaces and stars after 'answer:'": ("answer:" + " *" * (N // 2) + "x", (None, "none")),
    "spaces after 'choose'": ("I choose" + " " * N + "(D)", ("D", "statement")),
    "spaces after 'but'": ("not A but" + " " * N + "(B)", ("B", "statement")),
    "a statement repeated": ("Answer: A. " * (N // 10), ("A", "statement")),
    "statements revised over and over": ("The answer is A. Wait, the answer is B. " * (N // 40), ("B", "statement")),
    "one letter repeated": ("A" * N, (None, "none")),
    "bullets on every line, then a label": ("\n".join(["  * "] * (N // 4)) + "\nC. lead", ("C", "label")),
    "a long line of spaces, then a label": ("x\n" + " " * N + "D. thalassemia", ("D", "label")),
    "option text among blanks": ("so\n" + "\n\n" * N + "it looks like thalassemia", ("D", "text")),
}


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_answer_extraction_on_huge_adversarial_outputs(name):
    answer, (choice, how) = ADVERSARIAL[name]
    for text in (f"<think>{chr(10) * N}</think>{answer}", f"## Thinking\n\n{' ' * N}\n\n## Final Response\n\n{answer}"):
        reading = read_output(text, OPTIONS)
        assert (reading.first, reading.how) == (choice, how), name


PUMP_PREFIXES = ["x", "the answer is", "Answer:", "I choose", "but", "option", "\\boxed{", "A", "not A", "**"]
PUMP_RUNS = [" ", "\n", "\n\n", " *", "*", "(", " (", "\t\n", "A ", "-"]


@pytest.mark.parametrize("prefix", PUMP_PREFIXES)
def test_answer_extraction_every_keyword_then_every_long_run(prefix):
    """Each pattern's start, then a run of what its quantifiers take: a regex whose quantifiers re-split
    the run backtracks polynomially and this never ends. Nothing in the run is an answer."""
    for run in PUMP_RUNS:
        reading = read_output(f"<think>r</think>{prefix}{run * (N // len(run))}zz", OPTIONS)
        assert reading.how in ("statement", "label", "none"), (prefix, run)
        if reading.first is not None:  # only the letter already written in the prefix, or "A " repeated
            assert reading.first == "A" and ("A" in prefix or "A" in run), (prefix, run, reading)


def test_unclosed_reasoning_of_blank_lines_has_no_answer():
    assert read_output("<think>" + "\n\n" * N, OPTIONS).how == "unclosed"


def test_benchmark_scoring_of_a_2048_token_run_of_blank_lines():
    """The reported case: generations of `\\n\\n` to max_new_tokens, beside a well-formed one."""
    items = [Item("q?", OPTIONS, "C", "s")] * 2
    outputs = [["<think>ok</think>" + "\n\n" * 2048 + "x"], ["<think>ok</think>" + "\n\n" * 2048 + "The answer is C."]]
    summary, records = score(items, outputs)
    assert [r["choices"] for r in records] == [[None], ["C"]]
    assert summary["overall"]["accuracy"] == 0.5 and summary["overall"]["no_answer"] == 1


def test_chart_names_one_file_per_source_and_bounded():
    long = "MedQA " + "very long name " * 40
    sources = ["MedQA/test", "MedQA test", "MedQA_test", "medqa_test", long, long + "x", "..", "a/b", "a?b"]
    sources.append(chart_names({"m": {"by_source": {"a/b": {}}}})["a/b"][len("accuracy-"):-len(".png")])  # a's slug
    names = chart_names({"m": {"by_source": {s: {} for s in sources}}})
    assert len({n.casefold() for n in names.values()}) == len(sources)  # also on a case-insensitive disk
    assert all(len(n.encode()) <= 120 and "/" not in n for n in names.values())
    assert chart_names({"m": {"by_source": {"MedQA_USLME_test": {}}}}) == {"MedQA_USLME_test":
                                                                           "accuracy-MedQA_USLME_test.png"}


def score_files(directory: Path, sources: list[str]) -> tuple[Path, Path]:
    items = [{"question": f"q{i}?", "options": {"A": "x", "B": "y"}, "answer_idx": "A", "source": s}
             for i, s in enumerate(sources)]
    bench, pred = directory / "bench.json", directory / "pred.jsonl"
    bench.write_text(json.dumps(items))
    pred.write_text("".join(json.dumps({"output": "<think>r</think>The answer is A."}) + "\n" for _ in items))
    return bench, pred


def test_score_sources_differing_by_slash_or_space_keep_their_own_charts(tmp_path):
    sources = ["MedQA/test", "MedQA test", "MedQA_test", "medqa_test"]
    bench, pred = score_files(tmp_path, sources)
    res = run_cli_here("score", bench, "--predictions", pred, "--output-dir", tmp_path / "rep", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    charts = sorted(p.name for p in (tmp_path / "rep").glob("accuracy-*.png"))
    assert len({c.casefold() for c in charts}) == 4, charts
    doc = json.loads((tmp_path / "rep" / "benchmark.json").read_text())
    assert set(doc["by_source"]) == set(sources)


def test_score_source_name_too_long_for_a_file_name(tmp_path):
    sources = ["x" * 300, "y" * 5000]
    bench, pred = score_files(tmp_path, sources)
    res = run_cli_here("score", bench, "--predictions", pred, "--output-dir", tmp_path / "rep", timeout=300)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    out = tmp_path / "rep"
    assert len(list(out.glob("accuracy-*.png"))) == 2 and (out / "benchmark.json").is_file()
    assert set(json.loads((out / "benchmark.json").read_text())["by_source"]) == set(sources)


# the held-out split's inputs, on a fake adapter (checked before any model loads)
HELD_OUT_CASES = {
    "test_ids.json missing": (None, "test_ids.json' not found"),
    "test_ids.json not JSON": (b"[1, 2", "is not readable JSON"),
    "test_ids.json not a list": (b'{"ids": [1]}', "is not a list of row numbers"),
    "test_ids.json negative id": (b"[3, -1]", "is not a list of row numbers"),
    "test_ids.json ids not integers": (b'[1, "2"]', "is not a list of row numbers"),
    "test_ids.json empty": (b"[]", "lists no rows"),
    "test_ids.json ids out of range": (b"[1, 2, 99999]", "names row 99999 but the training data has 800 rows"),
}


@pytest.mark.parametrize("name", HELD_OUT_CASES)
def test_eval_held_out_split_inputs(name, workspace):  # noqa: F811
    content, expected = HELD_OUT_CASES[name]
    fake_adapter(workspace / "adapter")
    if content is not None:
        (workspace / "adapter" / "test_ids.json").write_bytes(content)
    run_case(workspace, ["eval", "adapter"], expected)


@pytest.mark.parametrize("mixture", [False, True], ids=["one source", "a mixture"])
def test_eval_held_out_split_needs_the_training_data(workspace, mixture):  # noqa: F811
    fake_adapter(workspace / "adapter")
    (workspace / "adapter" / "test_ids.json").write_text("[0, 1]")
    gone = str(workspace / "gone" / "rows.json")
    data = ({"data__source": None, "data__sources": [{"source": "builtin:tiny-medical"}, {"source": gone}]}
            if mixture else {"data__source": gone})
    (workspace / "adapter" / "recipe.yaml").write_text(yaml.safe_dump(recipe_with(output__dir="run", **data)))
    run_case(workspace, ["eval", "adapter"], "the held-out split is read from the training data")


def test_max_generations_with_benchmark_must_be_positive(workspace):  # noqa: F811
    fake_adapter(workspace / "adapter")
    bench, _ = score_files(workspace, ["s"])
    run_case(workspace, ["eval", "adapter", "--benchmark", bench.name, "--max-generations", "0"],
             "--max-generations must be at least 1")


@pytest.fixture(scope="module")
def moved_adapter(tmp_path_factory):
    """A tiny adapter trained on a local file, copied elsewhere, its training data then moved away."""
    from medsft.model.builtin.tiny_data import generate
    from medsft.recipe.files import load_recipe
    from medsft.train.run import run

    root = tmp_path_factory.mktemp("travel")
    data = root / "rows.json"
    data.write_text(json.dumps(generate(120)))
    recipe = load_recipe(REPO / "recipes" / "tiny-cpu.yaml",
                         [f"data.source={data}", f"output.dir={root / 'run'}", "training.max_steps=3",
                          "training.eval_strategy=no", "training.save_strategy=no"])
    run(recipe)
    moved = root / "elsewhere" / "adapter"
    shutil.copytree(recipe.adapter_dir, moved)
    data.rename(root / "rows-moved-away.json")
    bench = root / "bench.json"
    bench.write_text(json.dumps([{"question": r["question"], "options": r["options"], "answer_idx": r["answer_idx"],
                                  "source": "tiny"} for r in generate(5, seed=3)]))
    return moved, bench


@pytest.mark.slow
def test_adapter_travels_without_its_training_data(moved_adapter, tmp_path):
    adapter, bench = moved_adapter
    res = run_cli_here("infer", adapter, "--question", "A 40-year-old man has fatigue.", "--max-new-tokens", "4")
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_cli_here("merge", adapter, tmp_path / "merged")
    assert res.returncode == 0 and (tmp_path / "merged" / "config.json").is_file(), res.stderr[-2000:]
    # --max-generations with --benchmark: the first N items are scored, and it says so
    out = tmp_path / "rep"
    res = run_cli_here("eval", adapter, "--benchmark", bench, "--max-new-tokens", "4", "--no-base", "--max-generations", "2",
                  "--output-dir", out)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "scoring the first 2 of 5 items" in res.stdout + res.stderr
    doc = json.loads((out / "benchmark.json").read_text())
    assert doc["adapter"]["overall"]["n"] == 2 and len((out / "predictions-adapter.jsonl").read_text().splitlines()) == 2
    # the held-out split genuinely needs the data: one line, exit 2, nothing written
    before = snapshot(adapter)
    res = run_cli_here("eval", adapter)
    check_one_line_error(res, "the held-out split is read from the training data")
    assert snapshot(adapter) == before
