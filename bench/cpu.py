"""CPU benchmarks, runnable anywhere, printed as a table and saved to bench/results/cpu-<date>.json.

1. Step time of `medsft train` vs a bare TRL script with medsft's settings vs the notebook baseline, on
   tiny-cpu, in one run: each rep runs all three (rotating their order) with a log at every optimizer
   step; a run's step time is the median gap between consecutive step logs after 3 warm-up steps, taken
   at the same point of Trainer's loop in all three (medsft's metrics.jsonl `time`, a callback in the
   scripts), so one slow step or the start-up does not count. Reported: the median over reps, and the
   median of the per-rep medsft/bare ratios (these machines are noisy: only ratios within one run count).
2. Time from the command to the first optimizer step (imports, data, model load, first step).
3. Trained-token share (medsft masks the question; the notebook trains it) and computed tokens per real
   token for padded batches, padding-free and packing on the length distribution of the demo rows.

    python bench/cpu.py --reps 5 --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, save, steady_step_seconds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO.parent / "shared" / "data" / "medical-o1-demo.json"


def run(cmd, env=None) -> str:
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if res.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return res.stdout


def timing(start: float, log_times: list[float], steps: int) -> dict:
    """Steady step time (median gap between step logs) and time from the command to the first step."""
    assert len(log_times) == steps, f"expected one log per step, got {len(log_times)} for {steps}"
    return {"step_seconds": steady_step_seconds(log_times), "to_first_step": log_times[0] - start}


def medsft_run(steps: int) -> tuple[dict, dict]:
    """`medsft train` as a user runs it; step times from its own metrics.jsonl (logging every step)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        run([sys.executable, "-m", "medsft", "train", "recipes/tiny-cpu.yaml", "--set", f"output.dir={tmp}",
             "--set", f"training.max_steps={steps}", "--set", "training.eval_strategy=no",
             "--set", "training.save_strategy=no", "--set", "training.logging_steps=1"])
        records = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        logs = [r["time"] for r in records if "loss" in r and "train_runtime" not in r]
        return timing(start, logs, steps), records[-1]


def script_run(script: str, steps: int) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        out = run([sys.executable, f"bench/{script}", "--max-steps", str(steps), "--output", tmp,
                   "--logging-steps", "1"])
        result = json.loads(out.strip().splitlines()[-1])
        return timing(start, result["log_times"], steps), result


def token_stats(batch_size: int = 8, max_length: int = 4096) -> dict:
    """On the demo rows with the tiny tokenizer: trained share and padding waste."""
    import random

    from datasets import Dataset

    from medsft import data, tokenized
    from medsft.config import DataSection
    from medsft.model import load_tokenizer
    from medsft.config import ModelSection

    tok = load_tokenizer(ModelSection())
    rows = json.loads(DEMO.read_text())
    ds, _ = data.to_prompt_completion(Dataset.from_list(rows), DataSection())
    prepared = tokenized.prepare_split(ds, tok, name="demo")
    lengths = [len(x) for x in prepared["input_ids"]]
    trained = sum(sum(lab != -100 for lab in labels) for labels in prepared["labels"])
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    batches = [[lengths[i] for i in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]
    real = sum(lengths)
    padded = sum(max(b) * len(b) for b in batches)
    # best-fit-decreasing packing into rows of max_length (TRL's "bfd"), padded to max_length per row
    bins: list[int] = []
    for n in sorted((min(x, max_length) for x in lengths), reverse=True):
        fit = [i for i, used in enumerate(bins) if used + n <= max_length]
        if fit:
            best = min(fit, key=lambda i: max_length - bins[i] - n)
            bins[best] += n
        else:
            bins.append(n)
    return {
        "rows": len(lengths),
        "trained_token_share": {"medsft (prompt/completion)": trained / real, "notebook (messages)": 1.0},
        "computed_per_real_token": {f"padded batches of {batch_size}": padded / real, "padding-free": 1.0,
                                    "packing bfd, padding-free": 1.0,
                                    f"packing bfd, rows padded to {max_length}": len(bins) * max_length / real},
    }


RUNS = {
    "medsft": lambda steps: medsft_run(steps),
    "bare TRL": lambda steps: script_run("bare_trl.py", steps),
    "notebook": lambda steps: script_run("notebook_baseline.py", steps),
}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args(argv)
    names = list(RUNS)
    step = {k: [] for k in names}
    first = {k: [] for k in names}
    notebook_share = None
    for rep in range(args.reps):  # rotate the order each rep, so drift and "who runs first" hit all alike
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            t, result = RUNS[name](args.steps)
            step[name].append(t["step_seconds"])
            first[name].append(t["to_first_step"])
            if name == "notebook":
                notebook_share = result["first_batch_trained_token_share"]
        print(f"rep {rep + 1}: " + ", ".join(f"{k} {step[k][-1] * 1000:.1f} ms/step, first step at "
                                            f"{first[k][-1]:.1f} s" for k in names), flush=True)
    med = {k: median(v) for k, v in step.items()}
    med_first = {k: median(v) for k, v in first.items()}
    paired = [m / b for m, b in zip(step["medsft"], step["bare TRL"])]
    ratios = {"medsft / bare TRL (medians)": med["medsft"] / med["bare TRL"],
              "medsft / bare TRL (median of per-rep pairs)": median(paired),
              "notebook / bare TRL": med["notebook"] / med["bare TRL"]}
    tokens = token_stats()
    tokens["trained_token_share"]["notebook (messages)"] = notebook_share
    print(f"\n{'run':<12}{'median ms/step':>16}{'command → first step (s)':>28}")
    for k in names:
        print(f"{k:<12}{med[k] * 1000:>16.1f}{med_first[k]:>28.1f}")
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}")
    print(json.dumps(tokens, indent=2))
    save("cpu", {"steps": args.steps, "reps": args.reps, "method": "median gap between consecutive step logs after 3 warm-up steps; "
                 "order rotated each rep; see the docstring of bench/cpu.py",
                 "seconds_per_step": step, "median_seconds_per_step": med, "seconds_to_first_step": first,
                 "median_seconds_to_first_step": med_first, "ratios": ratios, "tokens": tokens})


if __name__ == "__main__":
    main()
