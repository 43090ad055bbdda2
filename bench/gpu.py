"""GPU benchmark in phases: 4-bit QLoRA throughput, achieved TFLOP/s, peak memory against the memory
preflight, the longest max_length that trains, and the notebook baseline, for random-weight models of real
architectures (medsft/memory/architectures), fully offline. Each phase fits in 9 minutes on one H100-class GPU.

    python bench/gpu.py --phase throughput   # qwen3-0.6b and llama3.1-8b at max_length 2048 and 4096: tokens/s, TFLOP/s
    python bench/gpu.py --phase memory       # the same runs (and variants) vs the preflight's `allocated`
    python bench/gpu.py --phase maxlen       # the longest max_length that trains llama3.1-8b (doubling search)
    python bench/gpu.py --phase notebook     # the notebook baseline beside medsft, same models, same phase
    python bench/gpu.py --phase all          # the four in sequence (~25 min)
    python bench/gpu.py --smoke              # anywhere (CI): the tiny model on the CPU, every phase's code path,
                                             # medsft's varlen branch over the reference kernel (varlen_on_cpu)

Each phase writes `gpu-<phase>-<date>.json` (`gpu-smoke-<phase>-…` with --smoke) to $MEDSFT_BENCH_RESULTS or
bench/results — machine, device, driver, CUDA, versions, commit, date, every run — and appends its table to
`gpu-summary.md` there. Every training run is a fresh process (`--run SPEC`): its own CUDA context and peak,
and an out-of-memory ends only that run. Random weights are built once per machine into
$MEDSFT_BENCH_MODELS (default /tmp/medsft-bench-models; llama3.1-8b is 16 GB of bf16 safetensors) and
tokenized with medsft's built-in tokenizer; rows are medsft's generated medical rows, packed (bfd) to
max_length, micro-batch 1 unless a row says otherwise.

Timing: the steady rate — tokens of steps 3..N over the wall time from the end of step 2 to the end of step N
(CUDA synchronised at each step end; the notebook's from its per-step log times); loading, tokenizing and the
first two steps are left out (they are in `wall_seconds`).

FLOPs per token: medsft.memory.flops.step_flops over the packed rows' real sequence lengths (causal attention
Σ Tᵢ², the LM head on the positions TRL's fused head runs it on: the trained ones on CUDA, all on the CPU, the
frozen 4-bit base without weight gradients, LoRA with them): `model_flops_per_token` (what MFU divides; no
recompute) and `hardware_flops_per_token` (checkpointing's recompute and FlashAttention's backward included).
TFLOP/s = tokens/s × model FLOPs per token.

Memory: `torch.cuda.max_memory_allocated` over the training steps only (peak statistics reset when training
begins, after loading; the loading peak is recorded apart), against `medsft.memory.model.estimate(arch,
resolve(recipe, detect()).memory_setup()).allocated` — the run as medsft.train.run.run resolves it, so the same
kernels and the same attention (both recorded in the row's `preflight`); ratio = estimate / measured. The
memory phase asks for kernels off and eval batch = micro-batch. The dense (ΣT)² masks are counted where one
is really built (memory_model's "dense attention mask" term: transformers' own SDPA or eager over a
padding-free batch); medsft's attentions (varlen, flash, row-by-row SDPA) build none.
bench/proof.py runs the steps that matter in one call under one deadline (bench/gpu_run.sh proof OUT).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    append_summary,
    describe_gpu,
    environment,
    gpu_environment,
    random_model_dir,
    results_dir,
    run_overrides,
    synthetic_rows,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "medsft" / "memory" / "architectures"
PHASES = ("throughput", "memory", "maxlen", "notebook")
RESULT_TAG = "MEDSFT_BENCH_RESULT "
EXIT_OOM = 3  # exit status of a --run child that ran out of GPU memory
TINY = "builtin:tiny-qwen2"
ROW_TOKENS = 105  # tokens of one generated row with the built-in tokenizer (measured: 83,570 for 800 rows)
GiB = 2**30


# ---------------------------------------------------------------- one training run (child process)


def recipe_for(spec: dict):
    from medsft.recipe.files import load_recipe

    kernels = f"'{spec.get('kernels', 'auto')}'"  # quoted: YAML reads a bare off as false
    sets = [f"model.name={spec['model']}", f"model.kernels={kernels}",
            f"training.max_length={spec['max_length']}", "training.packing=true", "training.packing_strategy=bfd",
            f"training.per_device_train_batch_size={spec.get('micro_batch', 1)}",
            f"training.per_device_eval_batch_size={spec.get('micro_batch', 1)}",
            f"training.activation_checkpointing={str(spec.get('checkpointing', True)).lower()}",
            f"training.learning_rate={spec.get('learning_rate', 1e-4)}", f"data.source={spec['data']}",
            *run_overrides(spec["steps"], spec["out"])]
    if spec.get("attention"):
        sets.append(f"model.attn_implementation={spec['attention']}")
    if spec.get("cuda", True):
        sets += ["model.dtype=bfloat16", "training.bf16=true"]
    return load_recipe(REPO / "recipes" / "tiny-cpu.yaml", sets)


def training_clock():
    """A callback: wall time and CUDA peak at every optimizer step, each step's loss and token count, and
    the peak statistics reset when training begins (after the model is loaded)."""
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    class Clock(TrainerCallback):
        loading_peak = begin_allocated = None
        times: list
        peaks: list
        logs: list

        def __init__(self):
            self.times, self.peaks, self.logs = [], [], []

        def on_train_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
                self.loading_peak = torch.cuda.max_memory_allocated()
                self.begin_allocated = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
                self.peaks.append(torch.cuda.max_memory_allocated())
            self.times.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and "train_runtime" not in logs:
                self.logs.append({"step": state.global_step, "loss": logs["loss"],
                                  "num_tokens": logs.get("num_tokens")})

    return Clock()


def train_with(callback, recipe):
    """medsft.train.run.run with one more callback on its trainer."""
    from medsft.train.run import run

    return run(recipe, resume="never", force=True, callbacks=[callback])


def preflight(recipe) -> tuple[object, dict]:
    from medsft.launch.detect import detect
    from medsft.memory.model import estimate
    from medsft.memory.preflight import Arch, read_config
    from medsft.train.runspec import resolve

    arch = Arch.from_config(read_config(recipe.model.name)[0])
    spec = resolve(recipe, detect())  # kernels chosen as medsft.train.run.run chooses them: the same run
    setup = spec.memory_setup()
    est = estimate(arch, setup)
    persistent = sum(b for _, b, _ in est.persistent)
    training = persistent + max(est.phase_bytes(p) for p in est.phases if p != "evaluation")
    weights = sum(b for n, b, _ in est.persistent if n not in ("LoRA gradients", "optimizer states"))
    return arch, {"kernels": spec.kernels, "attention": getattr(setup, "attention", None),
                  "allocated_gib": est.allocated / GiB, "training_phases_gib": training / GiB,
                  "peak_phase": est.peak_phase, "persistent_gib": persistent / GiB, "weights_gib": weights / GiB,
                  "phases_gib": {p: est.phase_bytes(p) / GiB for p in est.phases},
                  "persistent_terms_gib": {n: b / GiB for n, b, _ in est.persistent}}


def steady(clock, steps: int, micro_batch: int, max_length: int) -> dict:
    """Tokens/s over steps warm+1..N (warm = 2, fewer for short runs), from each step's logged token count."""
    warm = min(2, max(steps - 1, 0))
    tokens = [r["num_tokens"] for r in clock.logs]
    if len(tokens) == steps and all(t is not None for t in tokens):
        timed_tokens = tokens[-1] - (tokens[warm - 1] if warm else 0)
        per_step = tokens[-1] / steps
    else:  # TRL logged no token counts: full packed rows assumed
        timed_tokens, per_step = (steps - warm) * micro_batch * max_length, micro_batch * max_length
    seconds = (clock.times[-1] - clock.times[warm - 1]) if warm and len(clock.times) == steps else None
    return {"timed_steps": steps - warm, "tokens_per_step": per_step,
            "tokens_per_second": timed_tokens / seconds if seconds else None,
            "step_seconds": seconds / (steps - warm) if seconds else None}


def step_flops_of(trainer, arch, recipe, spec: dict) -> dict:
    """Model and hardware FLOPs per token over the training rows as packed (medsft.memory.flops)."""
    import torch

    from medsft.memory.flops import step_flops

    ds = trainer.train_dataset
    lengths = ds["seq_lengths"] if "seq_lengths" in ds.column_names else None
    flat = [s for row in lengths for s in row] if lengths else [len(ids) for ids in ds["input_ids"]]
    trained = sum(sum(lab != -100 for lab in row) for row in ds["labels"]) if "labels" in ds.column_names else None
    compact_head = torch.cuda.is_available() and trained is not None  # TRL's fused head: Triton on CUDA only
    targets = recipe.lora.target_modules
    f = step_flops(arch, flat, lora_rank=recipe.lora.rank, checkpointing=spec.get("checkpointing", True),
                   lora_targets=None if targets == "all-linear" else list(targets),
                   head_positions=trained if compact_head else None)
    model, hardware = f.per_token(sum(flat))
    return {"model_flops_per_token": model, "hardware_flops_per_token": hardware,
            "attention_context": sum(s * s for s in flat) / sum(flat),
            "head_positions": "trained" if compact_head else "all"}


def measure(spec: dict) -> dict:
    """Train spec['steps'] steps of medsft on spec['model']; everything the phases report about one run."""
    t0 = time.perf_counter()
    recipe = recipe_for(spec)
    arch, predicted = preflight(recipe)
    clock = training_clock()
    trainer = train_with(clock, recipe)
    wall = time.perf_counter() - t0
    steps = trainer.state.global_step
    rate = steady(clock, steps, spec.get("micro_batch", 1), spec["max_length"])
    runtime = next((r["train_runtime"] for r in trainer.state.log_history if "train_runtime" in r), None)
    flops = step_flops_of(trainer, arch, recipe, spec)
    lora = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    fpt = flops["model_flops_per_token"]
    manifest = json.loads((recipe.adapter_dir / "manifest.json").read_text())
    peak = max(clock.peaks) if clock.peaks else None
    tps = rate["tokens_per_second"]
    return {"run": "medsft", "model": spec["label"], "max_length": spec["max_length"],
            "micro_batch": spec.get("micro_batch", 1), "checkpointing": spec.get("checkpointing", True),
            "steps": steps, "kernels": manifest.get("kernels"), "attention": manifest.get("attn_implementation"),
            "attention_choice": manifest.get("attention"),
            **rate, "tflops_per_second": tps * fpt / 1e12 if tps else None,
            "tokens_per_second_overall": rate["tokens_per_step"] * steps / runtime if runtime else None,
            **flops, "hardware_tflops_per_second": tps * flops["hardware_flops_per_token"] / 1e12 if tps else None,
            "lora_params": lora,
            "losses": [r["loss"] for r in clock.logs],
            "peak_memory_gib": peak / GiB if peak else None,
            "peak_by_step_gib": [p / GiB for p in clock.peaks] if peak else None,
            "train_begin_allocated_gib": clock.begin_allocated / GiB if clock.begin_allocated else None,
            "loading_peak_gib": clock.loading_peak / GiB if clock.loading_peak else None,
            "preflight": predicted, "preflight_gib": predicted["allocated_gib"],
            "preflight_ratio": predicted["allocated_gib"] * GiB / peak if peak else None,
            "wall_seconds": wall}


def varlen_on_cpu() -> None:
    """The CPU smoke runs medsft's varlen branch as a GPU does: torch's own `varlen_attn` over the reference
    kernel registered at the aten op it calls (tests/compat/reference_kernel.py), the attention chosen for an sm90
    GPU in bf16 (`auto` picks varlen there without flash-attn), and the function allowed on CPU tensors."""
    from torch.nn.attention.varlen import varlen_attn

    from medsft.model import attention

    sys.path.insert(0, str(REPO))
    from tests.compat import reference_kernel

    reference_kernel.install()
    detected = attention.detect

    def as_on_a_gpu(cuda: bool, dtype: str) -> attention.Facts:
        facts = detected(cuda, dtype)
        return attention.Facts(cuda=True, capability=(9, 0), dtype="bfloat16", torch_version=facts.torch_version,
                               flash_attn=False, flash_attn_4=False)

    attention.detect = as_on_a_gpu
    attention._varlen_forward = attention.make_varlen_forward(varlen_attn)


def child_main(spec: dict) -> None:
    import torch
    from common import install_random_weights_loader

    install_random_weights_loader()  # a random_weights_dir model: weights drawn on the GPU, no files read
    if spec.get("varlen_on_cpu"):
        varlen_on_cpu()
    try:
        row = measure(spec)
    except torch.OutOfMemoryError as err:
        print(RESULT_TAG + json.dumps({"oom": True, "error": " ".join(str(err).split())[:300]}), flush=True)
        raise SystemExit(EXIT_OOM) from None
    except RuntimeError as err:  # bitsandbytes / cuBLAS report allocation failures as RuntimeError
        text = str(err)
        if "out of memory" in text.lower() or "CUBLAS_STATUS_ALLOC_FAILED" in text:
            print(RESULT_TAG + json.dumps({"oom": True, "error": " ".join(text.split())[:300]}), flush=True)
            raise SystemExit(EXIT_OOM) from None
        raise
    print(RESULT_TAG + json.dumps(row), flush=True)


# ---------------------------------------------------------------- the phases (parent process)


class Bench:
    """What the phases share: where models and data are, the clock of the current phase, the child runner."""

    def __init__(self, args, work: Path):
        self.args, self.work, self.smoke = args, work, args.smoke
        self.cuda = not args.smoke
        self.models_root = Path(os.environ.get("MEDSFT_BENCH_MODELS", "/tmp/medsft-bench-models"))
        self.phase_start, self.budget = time.monotonic(), args.phase_budget
        self.durations: dict[str, float] = {}  # model -> longest child so far (to predict the next)
        self.skipped: list[dict] = []
        self.runs = 0

    def start_phase(self) -> None:
        self.phase_start, self.skipped = time.monotonic(), []

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.phase_start)

    def model(self, name: str) -> str:
        if self.smoke:
            return TINY
        out = self.models_root / name
        if not (out / ".complete").is_file():
            code, _, seconds = self.child(["--build", name, str(self.models_root)], f"build {name}", 600)
            if code != 0:
                raise SystemExit(f"building random weights for {name} failed (exit {code})")
            print(f"random weights for {name} built in {seconds:.0f} s: {out}", flush=True)
        return str(out)

    def data(self, tokens: int) -> str:
        """Rows enough for `tokens` training tokens (the train split is 80%), or the built-in 800."""
        rows = math.ceil(tokens * 1.25 / ROW_TOKENS * 1.5)
        if rows <= 640:
            return "builtin:tiny-medical"
        path = self.work / f"rows-{rows}.jsonl"
        return str(path if path.is_file() else synthetic_rows(path, rows))

    def child(self, argv: list[str], label: str, timeout: float) -> tuple[int, dict | None, float]:
        """`python bench/gpu.py ARGV` in a fresh process (stdout prefixed with the label, stderr passed on);
        killed with its process group after `timeout` seconds (exit code 124)."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
               "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
        killed = []

        def kill():
            killed.append(True)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(max(timeout, 1), kill)
        timer.start()
        result = None
        try:
            for line in proc.stdout:
                if line.startswith(RESULT_TAG):
                    result = json.loads(line[len(RESULT_TAG):])
                else:
                    print(f"  [{label}] {line}", end="", flush=True)
            code = proc.wait()
        finally:
            timer.cancel()
        return (124 if killed else code), result, time.perf_counter() - t0

    def medsft(self, name: str, max_length: int, steps: int, micro_batch: int = 1, checkpointing: bool = True,
               kernels: str = "auto", attention: str | None = None) -> dict:
        """One medsft run in a fresh process; a row with `error`/`oom`/`skipped` when it did not complete.
        `attention`: model.attn_implementation (None: the recipe's, auto)."""
        label = (f"{name} S={max_length} mb={micro_batch}{'' if checkpointing else ' no-ckpt'} k={kernels}"
                 + (f" attn={attention}" if attention else ""))
        base = {"run": "medsft", "model": name, "max_length": max_length, "micro_batch": micro_batch,
                "checkpointing": checkpointing, **({"requested_attention": attention} if attention else {})}
        expected = self.durations.get(name, 0)
        if self.left() < expected:
            self.skipped.append({**base, "skipped": f"phase budget: {self.left():.0f} s left, a run of {name} "
                                                    f"took {expected:.0f} s"})
            print(f"skipped {label}: {self.skipped[-1]['skipped']}", flush=True)
            return {**base, "skipped": self.skipped[-1]["skipped"]}
        model = self.model(name)
        self.runs += 1
        out = self.work / f"run-{self.runs}"
        spec = {"model": model, "label": name, "max_length": max_length, "steps": steps, "micro_batch": micro_batch,
                "checkpointing": checkpointing, "kernels": kernels, "attention": attention, "out": str(out),
                "cuda": self.cuda, "varlen_on_cpu": self.smoke and not attention,
                "data": self.data(steps * micro_batch * max_length)}
        print(f"run {label}: {steps} steps", flush=True)
        code, row, seconds = self.child(["--run", json.dumps(spec)], label, max(self.left(), 30))
        self.durations[name] = max(self.durations.get(name, 0), seconds)
        if code == 0 and row:
            print(f"  -> {fmt(row.get('tokens_per_second'), '.0f')} tok/s, peak {fmt(row.get('peak_memory_gib'))} GiB, "
                  f"preflight {fmt(row.get('preflight_gib'))} GiB, {seconds:.0f} s", flush=True)
            return {**row, **({"requested_attention": attention} if attention else {})}
        what = "oom" if code == EXIT_OOM else "timeout" if code == 124 else "error"
        print(f"  -> {what} (exit {code}) after {seconds:.0f} s", flush=True)
        return {**base, what: True, "exit_code": code, "wall_seconds": seconds, **(row or {})}

    def notebook(self, name: str, max_length: int, steps: int) -> dict:
        """The notebook baseline (bench/notebook_baseline.py, its own settings: batch 8, flattening collator,
        SDPA) on the same model, in its own process."""
        base = {"run": "notebook", "model": name, "max_length": max_length, "micro_batch": 8}
        model = self.model(name)
        cmd = [sys.executable, str(REPO / "bench" / "notebook_baseline.py"), "--model", model, "--max-length",
               str(max_length), "--max-steps", str(steps), "--output", str(self.work / f"notebook-{name}"),
               "--logging-steps", "1"] + (["--bf16"] if self.cuda else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"}
        print(f"run notebook {name} S={max_length}: {steps} steps", flush=True)
        t0 = time.perf_counter()
        try:
            res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(self.left(), 30))
        except subprocess.TimeoutExpired:
            return {**base, "timeout": True, "wall_seconds": time.perf_counter() - t0}
        if res.returncode != 0:
            print(res.stderr[-3000:], flush=True)
            return {**base, "error": True, "exit_code": res.returncode, "wall_seconds": time.perf_counter() - t0}
        out = json.loads(res.stdout.strip().splitlines()[-1])
        per_step = out["num_tokens"] / out["steps"] if out.get("num_tokens") else None
        times = out.get("log_times") or []  # one per step (logging_steps 1): timed as medsft's, steps 3..N
        step = (times[-1] - times[1]) / (len(times) - 2) if len(times) > 2 else None
        peak = out["peak_memory_bytes"]
        return {**base, "steps": out["steps"], "tokens_per_step": per_step, "attention": out.get("attention"),
                "tokens_per_second": per_step / step if per_step and step else None, "step_seconds": step,
                "tokens_per_second_overall": out["num_tokens"] / out["train_runtime"] if out.get("num_tokens")
                else None,
                "peak_memory_gib": peak / GiB if peak else None, "trained_token_share":
                out["first_batch_trained_token_share"], "train_loss": out["train_loss"],
                "wall_seconds": time.perf_counter() - t0}


def fmt(value, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def phase_throughput(b: Bench) -> dict:
    rows = [b.medsft(name, length, b.args.steps) for name in b.args.models for length in b.args.lengths]
    table = [[r["model"], r["max_length"], r.get("kernels"), r.get("attention"), r.get("tokens_per_second"),
              r.get("tflops_per_second"), r.get("step_seconds"), r.get("peak_memory_gib"), outcome(r)] for r in rows]
    return {"rows": rows, "table": (["model", "max_length", "kernels", "attention", "tokens/s", "TFLOP/s", "s/step",
                                     "peak GiB", "outcome"], table),
            "note": f"medsft, 4-bit QLoRA, packed (bfd) micro-batch 1, {b.args.steps} steps; steady rate over steps "
                    "3..N; TFLOP/s = model FLOPs (bench/gpu.py docstring)"}


def phase_memory(b: Bench) -> dict:
    small, large = b.args.models[0], b.args.models[-1]
    runs = [(name, length, 1, True) for name in b.args.models for length in b.args.lengths]
    if b.smoke:  # one variant run covers both code paths
        runs.append((small, b.args.lengths[0], 2, False))
    else:
        runs += [(small, b.args.lengths[0], 1, False), (small, b.args.lengths[0], 2, True)]
    if large != small:
        runs.append((large, b.args.lengths[0], 2, True))
    rows = [b.medsft(name, length, b.args.memory_steps, mb, ckpt, kernels="off") for name, length, mb, ckpt in runs]
    table = [[r["model"], r["max_length"], r["micro_batch"], "on" if r["checkpointing"] else "off",
              r.get("peak_memory_gib"), r.get("preflight_gib"), r.get("preflight_ratio"),
              (r.get("preflight") or {}).get("peak_phase"), r.get("train_begin_allocated_gib"),
              (r.get("preflight") or {}).get("weights_gib"), r.get("loading_peak_gib"), outcome(r)] for r in rows]
    ratios = [r["preflight_ratio"] for r in rows if r.get("preflight_ratio")]
    return {"rows": rows, "ratios": ratios,
            "table": (["model", "max_length", "micro-batch", "checkpointing", "measured peak GiB", "estimate GiB",
                       "estimate/measured", "estimate's peak phase", "measured at train begin GiB",
                       "estimate weights+LoRA GiB", "loading peak GiB", "outcome"], table),
            "note": f"torch.cuda.max_memory_allocated over {b.args.memory_steps} training steps (reset after loading) "
                    "vs memory_model.estimate(...).allocated, kernels off, eval batch = micro-batch"}


def phase_maxlen(b: Bench) -> dict:
    """Doubling search, each probe a fresh process of `--maxlen-steps` steps; an out-of-memory (or a timeout,
    or the cap on probes, or the phase budget) ends it."""
    name, length, probes, stopped = b.args.maxlen_model, b.args.maxlen_start, [], "limit"
    longest = None
    while length <= b.args.maxlen_limit:
        if len(probes) >= b.args.maxlen_probes:
            stopped = f"cap of {b.args.maxlen_probes} probes"
            break
        if probes and b.left() < probes[-1].get("wall_seconds", 0) * 1.5:
            stopped = f"phase budget ({b.left():.0f} s left, the last probe took {probes[-1]['wall_seconds']:.0f} s)"
            break
        row = b.medsft(name, length, b.args.maxlen_steps)
        row["fits"] = not any(row.get(k) for k in ("oom", "error", "timeout", "skipped"))
        probes.append(row)
        if not row["fits"]:
            stopped = outcome(row)
            break
        longest, length = length, length * 2
    table = [[r["max_length"], "yes" if r["fits"] else outcome(r), r.get("tokens_per_step"), r.get("peak_memory_gib"),
              r.get("preflight_gib"), r.get("preflight_ratio"), r.get("step_seconds"), r.get("wall_seconds")]
             for r in probes]
    return {"rows": probes, "model": name, "longest_max_length": longest, "stopped": stopped,
            "table": (["max_length", "trains", "tokens/step", "peak GiB", "estimate GiB", "estimate/measured",
                       "s/step", "wall s"], table),
            "note": f"{name}: longest max_length that trains = {longest} (doubling from {b.args.maxlen_start}, "
                    f"{b.args.maxlen_steps} steps per probe, each a fresh process; stopped: {stopped})"}


def phase_notebook(b: Bench) -> dict:
    rows, table = [], []
    length = b.args.notebook_length
    for name in b.args.models:
        ours = b.medsft(name, length, b.args.steps)
        theirs = b.notebook(name, length, b.args.notebook_steps)
        rows += [ours, theirs]
        ratio = (ours["tokens_per_second"] / theirs["tokens_per_second"]
                 if ours.get("tokens_per_second") and theirs.get("tokens_per_second") else None)
        ours["vs_notebook"] = ratio
        for r in (ours, theirs):
            table.append([r["model"], r["run"], r.get("micro_batch"), r.get("tokens_per_step"),
                          r.get("tokens_per_second"),
                          r.get("step_seconds"), r.get("peak_memory_gib"), r.get("trained_token_share"),
                          ratio if r is ours else None, outcome(r)])
    return {"rows": rows,
            "table": (["model", "run", "batch", "tokens/step", "tokens/s", "s/step", "peak GiB", "trained share",
                       "medsft/notebook tokens/s", "outcome"], table),
            "note": f"same random model, same phase: medsft (packed bfd to {length}, micro-batch 1) vs the notebook "
                    "(batch 8 rows, DataCollatorWithFlattening, SDPA, question tokens trained; its peak includes "
                    "loading)"}


def outcome(row: dict) -> str:
    for key in ("skipped", "oom", "timeout", "error"):
        if row.get(key):
            return key if key != "skipped" else "skipped (budget)"
    return "ok"


PHASE_FUNCTIONS = {"throughput": phase_throughput, "memory": phase_memory, "maxlen": phase_maxlen,
                   "notebook": phase_notebook}


def smoke_defaults(args) -> None:
    """The tiny model on the CPU, every phase's code path, in about a minute."""
    args.models, args.lengths, args.steps, args.memory_steps = ["tiny-qwen2"], [256], 3, 2
    args.maxlen_model, args.maxlen_start, args.maxlen_limit, args.maxlen_steps = "tiny-qwen2", 128, 256, 1
    args.notebook_length, args.notebook_steps = 256, 4


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--phase", choices=[*PHASES, "all"], default="all")
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks every phase's code path")
    p.add_argument("--models", nargs="*", default=["qwen3-0.6b", "llama3.1-8b"], help="medsft/memory/architectures names")
    p.add_argument("--lengths", nargs="*", type=int, default=[2048, 4096])
    p.add_argument("--steps", type=int, default=10, help="throughput and notebook runs")
    p.add_argument("--memory-steps", type=int, default=3)
    p.add_argument("--maxlen-model", default="llama3.1-8b")
    p.add_argument("--maxlen-start", type=int, default=8192)
    p.add_argument("--maxlen-limit", type=int, default=131072)
    p.add_argument("--maxlen-probes", type=int, default=5)
    p.add_argument("--maxlen-steps", type=int, default=2)
    p.add_argument("--notebook-length", type=int, default=2048)
    p.add_argument("--notebook-steps", type=int, default=10)
    p.add_argument("--phase-budget", type=float, default=480, help="seconds: no run starts that would end a phase "
                   "later (runs are skipped and recorded), and a running child is killed at the budget")
    p.add_argument("--run", metavar="SPEC", help=argparse.SUPPRESS)  # one training run (JSON), in a child
    p.add_argument("--build", nargs=2, metavar=("NAME", "ROOT"), help=argparse.SUPPRESS)  # random weights, in a child
    p.add_argument("--describe", action="store_true", help=argparse.SUPPRESS)  # the GPU's description, in a child
    args = p.parse_args(argv)
    if args.run:
        return child_main(json.loads(args.run))
    if args.build:
        return random_model_dir(CONFIGS / f"{args.build[0]}.json", Path(args.build[1]))
    if args.describe:
        print(RESULT_TAG + json.dumps({"environment": environment(), "gpu": gpu_environment()}), flush=True)
        return None
    if args.smoke:
        smoke_defaults(args)
    else:
        import torch

        if not torch.cuda.is_available():  # creates no CUDA context
            raise SystemExit("no GPU: run with --smoke, or on a GPU machine")
    phases = PHASES if args.phase == "all" else (args.phase,)
    prefix = "gpu-smoke" if args.smoke else "gpu"
    with tempfile.TemporaryDirectory(prefix="medsft-gpu-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        # the machine as a child sees it: this process never creates a CUDA context (the children own the GPU)
        described = bench.child(["--describe"], "describe", 120)[1] or {"environment": environment(), "gpu": {}}
        gpu = described["gpu"]
        print(f"device: {describe_gpu(gpu)}", flush=True)
        for phase in phases:
            bench.start_phase()
            t0 = time.perf_counter()
            print(f"== phase {phase}", flush=True)
            result = PHASE_FUNCTIONS[phase](bench)
            seconds = time.perf_counter() - t0
            columns, table = result.pop("table")
            env = {**described["environment"], "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "command": " ".join(sys.argv)}
            commit = env.get("git_commit") or gpu.get("git_commit_env")
            path = save_result(f"{prefix}-{phase}", {
                "environment": env, "phase": phase, "phase_seconds": seconds, "gpu": gpu, "git_commit": commit,
                "settings": settings(args, phase), **result, "skipped": bench.skipped})
            title = (f"{phase} · {env['date']} · {describe_gpu(gpu)} · commit {(commit or 'unknown')[:10]}"
                     + (" · smoke (CPU, tiny model)" if args.smoke else ""))
            summary = append_summary(title, f"{result['note']}. {seconds:.0f} s. Data: {path.name}.", columns, table,
                                     name=f"{prefix}-summary.md")
            print(f"phase {phase}: {seconds:.0f} s; table appended to {summary}", flush=True)
            for row in [columns, *table]:
                print(" | ".join(fmt(v, ".3g") if isinstance(v, float) else str(v) for v in row), flush=True)
    return None


def save_result(name: str, payload: dict) -> Path:
    """common.save's file (`NAME-DATE.json` in the results folder), with the environment already in `payload`."""
    results = results_dir()
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}-{time.strftime('%Y-%m-%d')}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"saved {path}", flush=True)
    return path


def settings(args, phase: str) -> dict:
    keys = {"throughput": ("models", "lengths", "steps"), "memory": ("models", "lengths", "memory_steps"),
            "maxlen": ("maxlen_model", "maxlen_start", "maxlen_limit", "maxlen_probes", "maxlen_steps"),
            "notebook": ("models", "notebook_length", "steps", "notebook_steps")}[phase]
    return {"smoke": args.smoke, "phase_budget": args.phase_budget, **{k: getattr(args, k) for k in keys}}


if __name__ == "__main__":
    main()
