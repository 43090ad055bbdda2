"""CPU benchmarks, runnable anywhere, printed as a table and saved to bench/results/cpu-<date>.json.

1. medsft's own per-step overhead against plain TRL: `medsft train` (its trainer, callbacks, row recorder,
   preemption check, progress view: medsft.train.run.run) in one process and bench/bare_trl.py (plain TRL,
   nothing of medsft imported: the notebook's path with padding-free batches and completion-only loss, the
   same rows and settings) in another, taking turns step by step through a pair of pipes (bench/baton.py).
   A step's cycle runs from its on_step_begin to the next, the wait excluded, so logging, callbacks and data
   loading count. Reported: the median of the ratios of adjacent steps, in both orders (the process leading
   each pair runs at another speed: an A/A control of two identical plain-TRL processes measures that
   bias, and the geometric mean of the two orders cancels it). This is the number for "within 3% of plain
   TRL": process-to-process differences on this shared 2-core VM (±10% between identical runs) swamp a
   few percent otherwise.
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
    if name == "bare TRL":
        return [sys.executable, "bench/bare_trl.py", str(bare_settings(Path(out), steps))]
    return [sys.executable, "bench/notebook_baseline.py", "--max-steps", str(steps), "--output", out,
            "--logging-steps", "1"]


def bare_settings(tmp: Path, steps: int) -> Path:
    """What plain TRL trains, written as data from medsft's resolved tiny-cpu run: the model directory, the rows
    of medsft's training split (prompt/completion, in order), the SFTConfig, LoRA and quantization values."""
    from medsft.data import load
    from medsft.launch import detect as launch
    from medsft.recipe.files import load_recipe
    from medsft.train import assembly
    from medsft.train.runspec import resolve

    recipe = load_recipe(REPO / "recipes" / "tiny-cpu.yaml", run_overrides(steps, str(tmp / "bare-out")))
    spec = resolve(recipe, launch.detect())
    stage = assembly.build(spec, stop_after="data").data
    assert stage is not None
    formatted, _ = load.formatted_rows(recipe.data)
    position = {row_id: i for i, row_id in enumerate(formatted["row_id"])}
    train_file = tmp / "train.jsonl"
    with train_file.open("w", encoding="utf-8") as fh:
        for row_id in stage.prepared["train"]["row_id"]:
            row = formatted[position[row_id]]
            fh.write(json.dumps({"prompt": row["prompt"], "completion": row["completion"]}) + "\n")
    from medsft.model.load import resolve_model_path

    settings = {"model_dir": resolve_model_path(recipe.model.name), "dtype": recipe.model.dtype,
                "train_file": str(train_file), "sft": {**spec.sft_kwargs(), "disable_tqdm": True},
                "lora": recipe.lora.model_dump(mode="json"),
                "quantization": {**recipe.quantization.model_dump(mode="json"),
                                 "quant_storage": spec.placement.quant_storage}}
    path = tmp / "bare-settings.json"
    path.write_text(json.dumps(settings, default=str))
    return path


def sequential(name: str, steps: int) -> tuple[dict, dict]:
    """One benchmark process, start to end: (timing, its final record)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = command(name, steps, tmp)
        start = time.time()
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"benchmark run {name!r} failed:\n{res.stderr[-3000:]}")
        if name == "medsft":
            records = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
            logs, result = [r["time"] for r in records if "loss" in r and "train_runtime" not in r], records[-1]
        else:
            result = json.loads(res.stdout.strip().splitlines()[-1])
            logs = result["log_times"]
        return timing(start, logs, steps), result


def interleaved_ab(steps: int) -> dict:
    """`medsft train` and plain TRL in two processes, stepping in turns (module docstring, 1.), in both orders,
    and an A/A control of two plain-TRL processes."""
    sessions = {"medsft first": ["medsft", "bare TRL"], "bare first": ["bare TRL", "medsft"],
                "A/A control": ["bare TRL", "bare TRL 2"]}
    with tempfile.TemporaryDirectory() as tmp:
        settings = bare_settings(Path(tmp), steps)
        out = {name: turns_of(kinds, steps, settings, Path(tmp) / name.replace(" ", "-")) for name, kinds in sessions.items()}
    r1 = out["medsft first"]["medsft / bare TRL (median of adjacent pairs)"]
    r2 = out["bare first"]["medsft / bare TRL (median of adjacent pairs)"]
    aa = out["A/A control"]["cycles"]
    return {"steps": steps, "sessions": out, "medsft / bare TRL (position-corrected)": (r1 * r2) ** 0.5,
            "A/A control: leader / follower": median([x / y for x, y in zip(aa["bare TRL"], aa["bare TRL 2"])])}


def turns_of(kinds: list[str], steps: int, settings: Path, out: Path) -> dict:
    """One interleaved session of two processes (the first named leads each pair)."""
    import os

    out.mkdir(parents=True)
    first_r, first_w = os.pipe()  # the leader reads here
    second_r, second_w = os.pipe()
    fds = [(first_r, second_w), (second_r, first_w)]
    procs = []
    for kind, (read_fd, write_fd) in zip(kinds, fds):
        baton = ["--baton", str(read_fd), str(write_fd)]
        cmd = ([sys.executable, __file__, "--medsft-child", str(steps), str(out / "medsft"), *baton]
               if kind == "medsft" else [sys.executable, "bench/bare_trl.py", str(settings), *baton])
        procs.append(subprocess.Popen(cmd, cwd=REPO, pass_fds=(read_fd, write_fd), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    os.write(first_w, b"x")  # the leader's first turn
    for fd in (first_r, first_w, second_r, second_w):
        os.close(fd)
    cycles = {}
    for kind, proc in zip(kinds, procs):
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{kind} failed:\n{stderr[-3000:]}")
        cycles[kind] = json.loads(stdout.strip().splitlines()[-1])["cycles"][3:]  # after warm-up
    result = {"order": kinds, "cycles": cycles, "median_seconds_per_step": {k: median(v) for k, v in cycles.items()}}
    if "medsft" in cycles:
        result["medsft / bare TRL (median of adjacent pairs)"] = median(
            [m / b for m, b in zip(cycles["medsft"], cycles["bare TRL"])])
    return result


def medsft_child(steps: int, out: str, read_fd: int, write_fd: int) -> None:
    """`medsft train recipes/tiny-cpu.yaml` (medsft.train.run.run, as the command runs it) with the baton."""
    from baton import baton_callback

    from medsft.recipe.files import load_recipe
    from medsft.train.run import run

    turn = baton_callback(read_fd, write_fd)
    run(load_recipe(REPO / "recipes" / "tiny-cpu.yaml", run_overrides(steps, out)), resume="never", callbacks=[turn])
    print(json.dumps({"cycles": turn.cycles}))


def token_stats(batch_size: int = 8, max_length: int = 4096) -> dict:
    """On the demo rows with the tiny tokenizer: trained share and padding waste."""
    import random

    from datasets import Dataset

    from medsft.data import load as data
    from medsft.data import tokenized
    from medsft.model.load import load_tokenizer
    from medsft.recipe.data_section import DataSection
    from medsft.recipe.schema import ModelSection

    tok = load_tokenizer(ModelSection())
    rows = json.loads(DEMO.read_text())
    ds, _ = data.to_prompt_completion(Dataset.from_list(rows), DataSection())
    prepared = tokenized.tokenize(ds, tok, name="demo")
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
    p.add_argument("--interleaved-steps", type=int, default=120, help="steps of each trainer in the interleaved "
                   "A/B (0 skips it)")
    p.add_argument("--medsft-child", nargs=2, metavar=("STEPS", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--baton", nargs=2, type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.medsft_child:
        return medsft_child(int(args.medsft_child[0]), args.medsft_child[1], *args.baton)
    interleaved = None
    if args.interleaved_steps:
        interleaved = interleaved_ab(args.interleaved_steps)
        print(f"interleaved A/B, {args.interleaved_steps} steps each, both orders: medsft / plain TRL = "
              f"{interleaved['medsft / bare TRL (position-corrected)']:.3f} (position-corrected); "
              + ", ".join(f"{k}: {v['medsft / bare TRL (median of adjacent pairs)']:.3f}"
                          for k, v in interleaved["sessions"].items() if "medsft" in v["order"])
              + f"; A/A control leader/follower {interleaved['A/A control: leader / follower']:.3f}", flush=True)
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
        for k in ("medsft / bare TRL (position-corrected)", "A/A control: leader / follower"):
            print(f"interleaved (two processes), {k}: {interleaved[k]:.3f}")
    print(json.dumps(tokens, indent=2))
    save("cpu", {"steps": args.steps, "reps": args.reps, "method": "see the docstring of bench/cpu.py",
                 "seconds_per_step": step, "median_seconds_per_step": med, "seconds_to_first_step": first,
                 "median_seconds_to_first_step": med_first, "ratios": ratios, "interleaved": interleaved,
                 "tokens": tokens})


if __name__ == "__main__":
    main()
