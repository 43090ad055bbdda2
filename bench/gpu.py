"""GPU benchmark: 4-bit QLoRA throughput, achieved TFLOP/s, peak memory, and the memory preflight's
accuracy, for random-weight models of real architectures (medsft/architectures), fully offline.

    python bench/gpu.py                      # on a GPU: qwen3-0.6b and llama3.1-8b at 2048 and 4096
    python bench/gpu.py --smoke              # anywhere (CI): the tiny model, a few steps, same code paths

Per model and max_length: medsft (packing bfd, kernels auto: the manifest's choice is recorded) and the
notebook baseline (bench/notebook_baseline.py, its own settings: batch 8, flattening collator), each on
the same random-weight model and the built-in rows. Then the longest max_length that trains the largest
model (doubling from 4096, two steps each in a fresh process; an out-of-memory ends the search).

FLOPs per trained token (model FLOPs, recomputation not counted, so checkpointing lowers TFLOP/s
honestly): forward 2·P + backward through the frozen weights for the activation gradient 2·P (LoRA
still needs it, even though no weight gradient is formed) + LoRA 6·P_lora + attention
6·L·S·A·D (QKᵀ and AV, forward 2× and backward 4×, halved for the causal mask, times 2 matmuls),
with P the decoder's linear weights plus the lm_head. Rows are packed (bfd) to max_length so every
token is a real one. Preflight accuracy: preflight `total (allocated)` / torch.cuda.max_memory_allocated;
the goal is within ±10%.
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
from common import run_overrides, save  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).resolve().parents[1] / "medsft" / "architectures"
PROBE_OOM = 3  # exit status of a --probe run that ran out of GPU memory


def flops_per_token(arch, lora_params: int, seq: int) -> float:
    p = arch.linear_params() + arch.vocab * arch.hidden
    attn = 6 * arch.layers * seq * arch.heads * arch.head_dim
    return 4 * p + 6 * lora_params + attn


def random_model_dir(config_path: Path, root: Path) -> Path:
    """Random bf16 weights for an architecture, initialised on the GPU and saved as safetensors."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from medsft.tiny_model import build_tokenizer

    cfg = AutoConfig.for_model(**json.loads(config_path.read_text()))
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    out = root / config_path.stem
    model.save_pretrained(out, safe_serialization=True)
    tok = build_tokenizer()  # token ids stay below every real vocab size
    tok.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def one(model_name: str, max_length: int, steps: int, out_dir: Path, batch: int) -> dict:
    import torch

    from medsft.launch import detect
    from medsft.preflight import Arch, estimate, read_config, setup_from
    from medsft.recipe_files import load_recipe
    from medsft.runspec import resolve
    from medsft.train import run

    recipe = load_recipe(REPO / "recipes" / "tiny-cpu.yaml", [
        f"model.name={model_name}", "model.dtype=bfloat16", "training.bf16=true",
        f"training.max_length={max_length}", "training.packing=true", "training.packing_strategy=bfd",
        f"training.per_device_train_batch_size={batch}", "training.learning_rate=1e-4",
        *run_overrides(steps, str(out_dir))])
    arch = Arch.from_config(read_config(recipe.model.name)[0])
    predicted = estimate(arch, setup_from(resolve(recipe, detect(), kernels="off"))).allocated
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer = run(recipe, resume="never", force=True)
    seconds = time.perf_counter() - t0
    state = trainer.state
    logs = [r for r in state.log_history if "num_tokens" in r]
    tokens = logs[-1]["num_tokens"] if logs else steps * batch * max_length
    runtime = next(r["train_runtime"] for r in state.log_history if "train_runtime" in r)
    lora = sum(p.numel() for n, p in trainer.model.named_parameters() if p.requires_grad)
    fpt = flops_per_token(arch, lora, max_length)
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    kernels = json.loads((recipe.adapter_dir / "manifest.json").read_text())["kernels"]
    return {"run": "medsft", "model": Path(model_name).name, "max_length": max_length, "micro_batch": batch,
            "steps": steps, "kernels": kernels,
            "tokens_per_second": tokens / runtime, "tflops_per_second": tokens * fpt / runtime / 1e12,
            "flops_per_token": fpt, "peak_memory_gib": peak / 2**30 if peak else None,
            "preflight_gib": predicted / 2**30, "preflight_ratio": predicted / peak if peak else None,
            "wall_seconds": seconds}


def notebook(model_name: str, max_length: int, steps: int, out_dir: Path) -> dict:
    """The notebook baseline on the same model, in its own process (its own CUDA context and peak)."""
    import torch

    cmd = [sys.executable, str(REPO / "bench" / "notebook_baseline.py"), "--model", model_name,
           "--max-length", str(max_length), "--max-steps", str(steps), "--output", str(out_dir), "--logging-steps", "1"]
    if torch.cuda.is_available():
        cmd.append("--bf16")
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"notebook baseline failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    peak = out["peak_memory_bytes"]
    return {"run": "notebook", "model": Path(model_name).name, "max_length": max_length, "micro_batch": 8,
            "steps": out["steps"], "tokens_per_second": out["num_tokens"] / out["train_runtime"],
            "peak_memory_gib": peak / 2**30 if peak else None, "trained_token_share":
            out["first_batch_trained_token_share"]}


def fits(model_name: str, max_length: int) -> bool:
    """Two training steps at max_length in a fresh process: False on CUDA out-of-memory."""
    res = subprocess.run([sys.executable, __file__, "--probe", model_name, str(max_length)], cwd=REPO,
                         capture_output=True, text=True)
    if res.returncode == PROBE_OOM:
        return False
    if res.returncode != 0:
        raise SystemExit(f"probe at max_length {max_length} failed:\n{res.stderr[-3000:]}")
    return True


def longest_length(model_name: str, start: int, limit: int) -> dict:
    """Doubling search: the longest power-of-two max_length from `start` that trains."""
    best, length = None, start
    while length <= limit:
        if not fits(model_name, length):
            break
        best, length = length, length * 2
    return {"model": Path(model_name).name, "longest_max_length": best, "searched_up_to": min(length, limit)}


def probe(model_name: str, max_length: int) -> None:
    import torch

    try:
        with tempfile.TemporaryDirectory() as tmp:
            one(model_name, max_length, 2, Path(tmp) / "run", 1)
    except torch.OutOfMemoryError:
        raise SystemExit(PROBE_OOM) from None


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--smoke", action="store_true", help="tiny model, 2 steps: checks the code path anywhere")
    p.add_argument("--models", nargs="*", default=["qwen3-0.6b", "llama3.1-8b"])
    p.add_argument("--lengths", nargs="*", type=int, default=[2048, 4096])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--results-name", default=None)
    p.add_argument("--longest-up-to", type=int, default=131072, help="stop the max_length search here")
    p.add_argument("--probe", nargs=2, metavar=("MODEL", "MAX_LENGTH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe:
        return probe(args.probe[0], int(args.probe[1]))
    rows, longest = [], None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.smoke:
            rows.append(one("builtin:tiny-qwen2", 256, 2, root / "run", 2))
            rows.append(notebook("builtin:tiny-qwen2", 256, 4, root / "notebook"))
            longest = longest_length("builtin:tiny-qwen2", 128, 256)
        else:
            import torch

            if not torch.cuda.is_available():
                raise SystemExit("no GPU: run with --smoke, or on a GPU machine")
            model_dir = None
            for name in args.models:
                model_dir = random_model_dir(CONFIGS / f"{name}.json", root)
                for length in args.lengths:
                    rows.append(one(str(model_dir), length, args.steps, root / f"run-{name}-{length}", 1))
                    print(json.dumps(rows[-1]), flush=True)
                    rows.append(notebook(str(model_dir), length, args.steps, root / f"notebook-{name}-{length}"))
                    print(json.dumps(rows[-1]), flush=True)
            longest = longest_length(str(model_dir), 4096, args.longest_up_to)
    for r in rows:
        extra = (f"{r['tflops_per_second']:>8.2f} TFLOP/s  kernels {r['kernels']}  preflight/peak "
                 f"{r['preflight_ratio'] or float('nan'):.2f}") if r["run"] == "medsft" else ""
        print(f"{r['run']:<9}{r['model']:<16} S={r['max_length']:<6} {r['tokens_per_second']:>10.0f} tok/s  "
              f"peak {r['peak_memory_gib'] or 0:.2f} GiB  {extra}")
    print(f"longest max_length that trains {longest['model']}: {longest['longest_max_length']}")
    save(args.results_name or ("gpu-smoke" if args.smoke else "gpu"), {"rows": rows, "longest": longest})


if __name__ == "__main__":
    main()
