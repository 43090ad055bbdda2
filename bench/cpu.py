"""CPU benchmarks, runnable anywhere, printed as a table and saved to bench/results/cpu-<date>.json.

1. medsft's own per-step overhead: medsft's trainer (as `medsft train` builds it: MedsftTrainer, its
   callbacks, the row recorder, the preemption check) and a bare SFTTrainer with the same SFTConfig,
   data and model, in one process, taking turns step by step (two threads, one baton). A step's time runs
   from its on_step_begin to the next, so logging, callbacks and data loading count. Reported: the median
   of the ratios of adjacent steps. This is the number for "within 3% of bare TRL": process-to-process
   differences on this shared 2-core VM (±10% between identical runs) swamp a few percent otherwise.
   Absolute times here are higher than alone (two models take turns in the caches); only the ratio counts.
2. Whole processes: `medsft train` vs bench/bare_trl.py vs the notebook baseline, each rep running all
   three (rotating their order) with a log at every optimizer step; a run's step time is the median gap
   between consecutive step logs after 3 warm-up steps. Reported: medians over reps, per-rep ratios, and
   the time from the command to the first optimizer step (imports, data, model load, first step).
3. Trained-token share (medsft masks the question; the notebook trains it) and computed tokens per real
   token for padded batches, padding-free and packing on the length distribution of the demo rows.

    python bench/cpu.py --reps 5 --steps 40 --interleaved-steps 120
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, run_overrides, save, steady_step_seconds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO.parent / "shared" / "data" / "medical-o1-demo.json"


def timing(start: float, log_times: list[float], steps: int) -> dict:
    """Steady step time (median gap between step logs) and time from the command to the first step."""
    assert len(log_times) == steps, f"expected one log per step, got {len(log_times)} for {steps}"
    return {"step_seconds": steady_step_seconds(log_times), "to_first_step": log_times[0] - start}


def command(name: str, steps: int, out: str) -> list[str]:
    if name == "medsft":  # as a user runs it; step times from its own metrics.jsonl (a log every step)
        return [sys.executable, "-m", "medsft", "train", "recipes/tiny-cpu.yaml",
                *(arg for o in run_overrides(steps, out) for arg in ("--set", o))]
    script = {"bare TRL": "bare_trl.py", "notebook": "notebook_baseline.py"}[name]
    return [sys.executable, f"bench/{script}", "--max-steps", str(steps), "--output", out, "--logging-steps", "1"]


def sequential(name: str, steps: int) -> tuple[dict, dict]:
    """One benchmark process, start to end: (timing, its final record)."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.time()
        res = subprocess.run(command(name, steps, tmp), cwd=REPO, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"benchmark run {name!r} failed:\n{res.stderr[-3000:]}")
        if name == "medsft":
            records = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
            logs, result = [r["time"] for r in records if "loss" in r and "train_runtime" not in r], records[-1]
        else:
            result = json.loads(res.stdout.strip().splitlines()[-1])
            logs = result["log_times"]
        return timing(start, logs, steps), result


class Baton:
    """Two trainers in two threads take turns, one optimizer step each, so consecutive steps of the two
    are timed seconds apart and a slow moment of the machine slows both alike."""

    def __init__(self, names: list[str]):
        self.cond = threading.Condition()
        self.names, self.turn, self.done = names, names[0], set()

    def other(self, name: str) -> str:
        return self.names[1 - self.names.index(name)]

    def hand_over(self, name: str, finished: bool = False) -> None:
        with self.cond:
            if finished:
                self.done.add(name)
            self.turn = self.other(name)
            self.cond.notify_all()

    def wait_turn(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name or self.other(name) in self.done)

    def callback(self, name: str):
        """Added last, so a cycle (step begin → next step begin) covers every other callback's work too."""
        from transformers import TrainerCallback

        baton = self

        class Turn(TrainerCallback):
            def __init__(self):
                self.start, self.cycles = None, []

            def on_step_begin(self, args, state, control, **kwargs):
                if self.start is not None:
                    self.cycles.append(time.perf_counter() - self.start)
                    baton.hand_over(name)
                baton.wait_turn(name)
                self.start = time.perf_counter()

            def on_train_end(self, args, state, control, **kwargs):
                baton.hand_over(name, finished=True)

        return Turn()


def interleaved_ab(steps: int) -> dict:
    """medsft's trainer (build_trainer: MedsftTrainer, its callbacks, the row recorder, the preemption
    check) and a bare SFTTrainer with the same SFTConfig, data and (separately loaded) model, trained in
    one process, stepping in turns. What differs between them is exactly medsft's per-step code; start-up,
    allocator and core placement are shared, and drift is cancelled step by step."""
    from bare_trl import bare_trainer
    from medsft import data, data_cache, launch, model as model_mod
    from medsft.preemption import PreemptionCallback
    from medsft.recipe_files import load_recipe
    from medsft.runspec import resolve
    from medsft.train import build_trainer
    from medsft.upstream import keep_4bit_trainable_layout

    def base_model(spec):
        model = model_mod.load_model(spec.recipe, spec.placement, spec.launch.cuda)[0]
        keep_4bit_trainable_layout(model)
        return model

    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(REPO / "recipes" / "tiny-cpu.yaml", run_overrides(steps, tmp))
        spec = resolve(recipe, launch.detect())
        args = spec.sft_config()
        tokenizer = model_mod.load_tokenizer(recipe.model)
        splits, _, raw = data.load_splits(recipe.data)
        prepared, _, _ = data_cache.prepared_splits(spec, raw, splits, tokenizer, report=lambda m: None)
        medsft = build_trainer(spec, args, base_model(spec), tokenizer, prepared)
        medsft.add_callback(PreemptionCallback())
        bare = bare_trainer(recipe, args, base_model(spec), tokenizer, prepared["train"])
        trainers = {"medsft": medsft, "bare TRL": bare}
        baton = Baton(list(trainers))
        turns = {name: baton.callback(name) for name in trainers}
        for name, trainer in trainers.items():
            trainer.add_callback(turns[name])
        threads = [threading.Thread(target=t.train, name=n) for n, t in trainers.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cycles = {name: turn.cycles[3:] for name, turn in turns.items()}  # after warm-up
        pairs = [m / b for m, b in zip(cycles["medsft"], cycles["bare TRL"])]
        return {"steps": steps, "seconds_per_step": cycles,
                "median_seconds_per_step": {k: median(v) for k, v in cycles.items()},
                "medsft / bare TRL (medians)": median(cycles["medsft"]) / median(cycles["bare TRL"]),
                "medsft / bare TRL (median of adjacent pairs)": median(pairs)}


def token_stats(batch_size: int = 8, max_length: int = 4096) -> dict:
    """On the demo rows with the tiny tokenizer: trained share and padding waste."""
    import random

    from datasets import Dataset

    from medsft import data, tokenized
    from medsft.model import load_tokenizer
    from medsft.recipe import DataSection, ModelSection

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
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--interleaved-steps", type=int, default=120, help="steps of each trainer in the in-process "
                   "interleaved A/B (0 skips it)")
    args = p.parse_args(argv)
    interleaved = None
    if args.interleaved_steps:
        interleaved = interleaved_ab(args.interleaved_steps)
        print(f"interleaved A/B, {args.interleaved_steps} steps each: medsft / bare TRL = "
              f"{interleaved['medsft / bare TRL (median of adjacent pairs)']:.3f} (median of adjacent pairs), "
              f"{interleaved['medsft / bare TRL (medians)']:.3f} (ratio of medians)", flush=True)
    names = ["medsft", "bare TRL", "notebook"]
    step = {k: [] for k in names}
    first = {k: [] for k in names}
    notebook_share = None
    for rep in range(args.reps):  # rotate the order each rep, so drift and "who runs first" hit all alike
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            t, result = sequential(name, args.steps)
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
    if interleaved:
        for k in ("medsft / bare TRL (median of adjacent pairs)", "medsft / bare TRL (medians)"):
            print(f"interleaved in one process, {k}: {interleaved[k]:.3f}")
    print(json.dumps(tokens, indent=2))
    save("cpu", {"steps": args.steps, "reps": args.reps, "method": "see the docstring of bench/cpu.py",
                 "seconds_per_step": step, "median_seconds_per_step": med, "seconds_to_first_step": first,
                 "median_seconds_to_first_step": med_first, "ratios": ratios, "interleaved": interleaved,
                 "tokens": tokens})


if __name__ == "__main__":
    main()
