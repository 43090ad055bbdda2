"""`medsft eval --benchmark` on the tiny adapter: the demo file's 198 MedQA-style items through the
per-source table, benchmark.json and the PNGs; `medsft score` agreeing on eval's own predictions; and
data-parallel `accelerate launch` (2 CPU processes over gloo) giving the same per-item answers as 1.
The tiny adapter is a random-init toy: accuracies are near chance, so only structure, agreement and
equality are asserted, never quality."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medsft.recipe.files import load_recipe
from tests.conftest import REPO, free_port, run_cli_here

pytestmark = pytest.mark.slow  # trains the tiny model


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    from medsft.train.run import run

    out = tmp_path_factory.mktemp("bench-run")
    recipe = load_recipe(REPO / "recipes" / "tiny-cpu.yaml",
                         [f"output.dir={out}", "training.eval_strategy=no", "training.save_strategy=no"])
    run(recipe)
    return recipe.adapter_dir


@pytest.fixture(scope="module")
def bench(demo_json, tmp_path_factory):
    """The demo file as a benchmark: its 4-option items named as the paper's MedQA, the 5-option ones apart."""
    rows = json.loads(demo_json.read_text())
    items = [{"question": r["question"], "options": r["options"], "answer_idx": r["answer_idx"],
              "source": "MedQA_USLME_test" if len(r["options"]) == 4 else "medqa-demo-5options"} for r in rows]
    path = tmp_path_factory.mktemp("bench") / "demo-bench.json"
    path.write_text(json.dumps(items))
    return path


def test_eval_benchmark_demo(adapter, bench, tmp_path):
    out = tmp_path / "report"
    res = run_cli_here("eval", adapter, "--benchmark", bench, "--max-new-tokens", "12", "--batch-size", "16",
                  "--output-dir", out, env={"COLUMNS": "160"}, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads((out / "benchmark.json").read_text())
    for name in ("adapter", "base"):
        model = doc[name]
        assert model["overall"]["n"] == 198 and set(model["by_source"]) == {"MedQA_USLME_test", "medqa-demo-5options"}
        assert model["by_source"]["MedQA_USLME_test"]["n"] == 176
        assert all(0 <= b["accuracy"] <= 1 and 0 <= b["no_answer"] <= b["n"]
                   for b in [model["overall"], *model["by_source"].values()])
        s = model["settings"]
        assert (s["do_sample"], s["temperature"], s["top_p"], s["max_new_tokens"], s["seed"], s["samples"],
                s["prompt"]) == (True, 0.5, 0.9, 12, 42, 1, "huatuo")  # the papers' sampling, recorded
        lines = (out / f"predictions-{name}.jsonl").read_text().splitlines()
        assert len(lines) == 198 and all(len(json.loads(x)["outputs"]) == 1 for x in lines)
    assert doc["delta"]["overall"] == pytest.approx(doc["adapter"]["overall"]["accuracy"]
                                                    - doc["base"]["overall"]["accuracy"])
    assert set(doc["published"]["by_source"]) == {"MedQA_USLME_test"}  # 5-option MedQA is not the paper's
    for source in ("MedQA_USLME_test", "medqa-demo-5options"):
        assert (out / f"accuracy-{source}.png").stat().st_size > 1000
    assert "MedQA_USLME_test" in res.stdout and "overall" in res.stdout and "published: HuatuoGPT-o1-8B" in res.stdout
    assert "items/s" in res.stderr  # the progress bar

    # `medsft score` on eval's own predictions reads exactly what eval read
    scored = tmp_path / "scored"
    res = run_cli_here("score", bench, "--predictions", out / "predictions-adapter.jsonl", "--output-dir", scored,
                  timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    again = json.loads((scored / "benchmark.json").read_text())
    assert again["overall"] == doc["adapter"]["overall"] and again["by_source"] == doc["adapter"]["by_source"]


def launch(adapter, bench, out, processes: int, *extra) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "accelerate_configs" / "ddp.yaml"), "--num_processes", str(processes),
           "--main_process_port", str(free_port()), "-m", "medsft", "eval",
           str(adapter), "--benchmark", str(bench), "--limit", "20", "--max-new-tokens", "24", "--batch-size", "4",
           "--no-base", "--output-dir", str(out), *extra]
    # one thread per process in both runs: the same kernels, so the same floating-point sums
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def answers(out) -> list[tuple]:
    return [(r["index"], r["outputs"], r["choices"]) for r in map(json.loads, (out / "predictions-adapter.jsonl")
                                                                  .read_text().splitlines())]


@pytest.mark.parametrize("mode", [["--greedy"], ["--seed", "7"]], ids=["greedy", "sampled"])
def test_data_parallel_matches_one_process(adapter, bench, tmp_path, mode):
    runs = {}
    for processes in (1, 2):
        res = launch(adapter, bench, tmp_path / f"p{processes}", processes, *mode)
        assert res.returncode == 0, res.stderr[-4000:]
        assert res.stdout.count("benchmark report written to") == 1, "only the main rank reports"
        runs[processes] = answers(tmp_path / f"p{processes}")
        doc = json.loads((tmp_path / f"p{processes}" / "benchmark.json").read_text())
        assert doc["adapter"]["settings"]["processes"] == processes and doc["adapter"]["overall"]["n"] == 40
    assert len(runs[1]) == 40 and runs[1] == runs[2]  # batches are dealt whole and seeded by number
    print(f"data-parallel ({mode[0]}): 2 processes gave the same {len(runs[1])} answers as 1")
