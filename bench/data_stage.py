"""The data stage with a cold cache vs a warm one: raw rows → the tokenized splits the trainer receives.

    python bench/data_stage.py --rows 10000 --reps 2 --num-proc 2

Rows: the demo file's real rows (reasoning traces of real length), repeated to --rows and written once as
JSONL; generated tiny-medical rows where the demo file is absent. Each measurement runs in a fresh
process and times only the stage (`assembly.prepare_data`: load, split, tokenize), after imports and
the tokenizer. Cold: a new MEDSFT_HOME and HF datasets cache (datasets caches the JSON → Arrow
conversion too); warm: the same directories once more. Cold and warm alternate. A third, cold run with
`training.dataset_num_proc` = --num-proc shows what parallel tokenization buys on this machine.
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
from common import median, save  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO.parent / "shared" / "data" / "medical-o1-demo.json"


def write_rows(path: Path, n: int) -> str:
    if DEMO.is_file():
        base, origin = json.loads(DEMO.read_text()), "demo rows repeated"
    else:
        from medsft.model.builtin.tiny_data import generate

        base, origin = generate(800), "generated tiny-medical rows"
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            row = dict(base[i % len(base)])
            row["Question"] = f"[{i}] {row['Question']}"  # distinct rows, same length distribution
            fh.write(json.dumps(row) + "\n")
    return origin


def child(data_file: str, num_proc: int) -> None:
    """One timed data stage in this process; prints a JSON line."""
    from medsft.launch import detect as launch
    from medsft.model.load import load_tokenizer
    from medsft.recipe.files import load_recipe
    from medsft.train import assembly
    from medsft.train.runspec import resolve

    recipe = load_recipe(REPO / "recipes" / "tiny-cpu.yaml", [f"data.source={data_file}", "training.max_length=4096",
                                                                  f"training.dataset_num_proc={num_proc}"])
    tokenizer = load_tokenizer(recipe.model)
    messages: list[str] = []
    t0 = time.perf_counter()
    spec = resolve(recipe, launch.detect(), kernels="off")
    prepared = assembly.prepare_data(spec, tokenizer, report=messages.append).prepared  # load, split, tokenize
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "cache_hit": any("loaded tokenized splits" in m for m in messages),
                      "train_rows": len(prepared["train"])}))


def timed(data_file: Path, home: Path, num_proc: int = 1) -> dict:
    env = {**os.environ, "MEDSFT_HOME": str(home / "medsft"), "HF_DATASETS_CACHE": str(home / "hf-datasets"),
           "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, __file__, "--child", str(data_file), "--num-proc", str(num_proc)], cwd=REPO, env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"data stage failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def fresh_home(tmp: Path, name: str) -> Path:
    home = tmp / name
    (home / "medsft").mkdir(parents=True)
    os.symlink(tmp / "home-tiny" / "medsft" / "models", home / "medsft" / "models")
    return home


def measure(rows: int, reps: int, num_proc: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_file = tmp / "rows.jsonl"
        origin = write_rows(data_file, rows)
        home = tmp / "home-tiny"  # the tiny tokenizer is built once, outside the timings
        timed(data_file, home)
        cold, warm, cold_procs = [], [], []
        for rep in range(reps):
            home = fresh_home(tmp, f"home-{rep}")
            first, second = timed(data_file, home), timed(data_file, home)
            assert not first["cache_hit"] and second["cache_hit"], (first, second)
            cold.append(first["seconds"])
            warm.append(second["seconds"])
            line = f"rep {rep + 1}: cold {cold[-1]:.2f} s, warm {warm[-1]:.2f} s"
            if num_proc > 1:
                cold_procs.append(timed(data_file, fresh_home(tmp, f"home-{rep}-procs"), num_proc)["seconds"])
                line += f", cold with dataset_num_proc={num_proc} {cold_procs[-1]:.2f} s"
            print(line, flush=True)
    out = {"rows": rows, "origin": origin, "train_rows": first["train_rows"], "cold_seconds": cold,
           "warm_seconds": warm, "cold_over_warm": median(cold) / median(warm)}
    if cold_procs:
        out[f"cold_seconds_dataset_num_proc_{num_proc}"] = cold_procs
    return out


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=10000)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--num-proc", type=int, default=os.cpu_count(),
                   help="also time a cold stage with training.dataset_num_proc=N (default: all cores)")
    p.add_argument("--child", metavar="DATA_FILE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child, args.num_proc)
    result = measure(args.rows, args.reps, args.num_proc)
    print(f"data stage on {args.rows} rows: cold {median(result['cold_seconds']):.2f} s, "
          f"warm {median(result['warm_seconds']):.2f} s (cold/warm {result['cold_over_warm']:.1f}x)")
    save("data-stage", result)


if __name__ == "__main__":
    main()
