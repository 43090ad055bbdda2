"""CPU benchmarks, runnable anywhere, printed as a table and saved to bench/results/cpu-<date>.json.

1. Step time of `medsft train` vs a bare TRL script with medsft's settings vs the notebook baseline, on
   tiny-cpu, alternating A/B/C in one run, median of --reps repetitions (these machines are noisy, so
   only ratios within one run are reported).
2. Trained-token share (medsft masks the question; the notebook trains it) and computed tokens per real
   token for padded batches, padding-free and packing on the length distribution of the demo rows.

    python bench/cpu.py --reps 3 --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, save  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO.parent / "shared" / "data" / "medical-o1-demo.json"


def run(cmd, env=None) -> str:
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if res.returncode != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return res.stdout


def medsft_step_time(steps: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        run([sys.executable, "-m", "medsft", "train", "recipes/tiny-cpu.yaml", "--set", f"output.dir={tmp}",
             "--set", f"training.max_steps={steps}", "--set", "training.eval_strategy=no",
             "--set", "training.save_strategy=no"])
        final = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()][-1]
        return final["train_runtime"] / steps


def script_step_time(script: str, steps: int) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = run([sys.executable, f"bench/{script}", "--max-steps", str(steps), "--output", tmp])
        result = json.loads(out.strip().splitlines()[-1])
        return result["train_runtime"] / result["steps"], result


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


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args(argv)
    times = {"medsft": [], "bare TRL": [], "notebook": []}
    notebook_share = None
    for rep in range(args.reps):  # alternate A/B/C so drift hits all three alike
        times["medsft"].append(medsft_step_time(args.steps))
        times["bare TRL"].append(script_step_time("bare_trl.py", args.steps)[0])
        t, result = script_step_time("notebook_baseline.py", args.steps)
        times["notebook"].append(t)
        notebook_share = result["first_batch_trained_token_share"]
        print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1] * 1000:.0f} ms/step" for k, v in times.items()), flush=True)
    med = {k: median(v) for k, v in times.items()}
    tokens = token_stats()
    tokens["trained_token_share"]["notebook (messages)"] = notebook_share
    ratios = {"medsft / bare TRL": med["medsft"] / med["bare TRL"], "notebook / bare TRL": med["notebook"] / med["bare TRL"]}
    print(f"\n{'run':<12}{'median ms/step':>16}")
    for k, v in med.items():
        print(f"{k:<12}{v * 1000:>16.1f}")
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}")
    print(json.dumps(tokens, indent=2))
    save("cpu", {"steps": args.steps, "reps": args.reps, "seconds_per_step": times, "median_seconds_per_step": med,
                 "ratios": ratios, "tokens": tokens})


if __name__ == "__main__":
    main()
