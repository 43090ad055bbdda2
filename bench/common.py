"""What every benchmark records beside its numbers: machine, device, versions, date, command."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"  # MEDSFT_BENCH_RESULTS overrides (tests)


def environment() -> dict:
    from medsft.versions import git_commit, package_versions

    info = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": platform.machine(), "python": sys.version.split()[0],
            "cpus": __import__("os").cpu_count(), "versions": package_versions(), "git_commit": git_commit(),
            "command": " ".join(sys.argv)}
    try:
        import torch

        info["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    except Exception:  # torch missing: the record still says where it ran
        info["device"] = "unknown"
    return info


def save(name: str, payload: dict) -> Path:
    import os

    results = Path(os.environ.get("MEDSFT_BENCH_RESULTS", RESULTS))
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}-{time.strftime('%Y-%m-%d')}.json"
    path.write_text(json.dumps({"environment": environment(), **payload}, indent=2) + "\n")
    print(f"saved {path}")
    return path


def median(values):
    return statistics.median(values) if values else float("nan")


def run_overrides(steps: int, output_dir: str, logging_steps: int = 1) -> list[str]:
    """The `--set` overrides every timed run uses: a fixed number of steps, no eval, no checkpoints."""
    return [f"training.max_steps={steps}", "training.eval_strategy=no", "training.save_strategy=no",
            f"training.logging_steps={logging_steps}", f"output.dir={output_dir}"]


def step_clock():
    """A callback noting the wall time of every training log; with logging_steps=1 that is one per optimizer
    step, taken at the same point of Trainer's loop as medsft's metrics.jsonl `time` field."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and "train_runtime" not in logs:
                self.times.append(time.time())

    return StepClock()


def steady_step_seconds(times: list[float], warmup: int = 3) -> float:
    """Median interval between consecutive steps after `warmup` steps: robust to one slow step."""
    gaps = [b - a for a, b in zip(times[warmup:], times[warmup + 1:])]
    return median(gaps)


# ---------------------------------------------------------------- GPU benchmark and tests/gpu (bench/gpu.py)

SUMMARY = "gpu-summary.md"  # the one markdown file every GPU phase appends its table to


def results_dir() -> Path:
    """Where benchmark results go: $MEDSFT_BENCH_RESULTS, else bench/results."""
    import os

    return Path(os.environ.get("MEDSFT_BENCH_RESULTS") or RESULTS)


def gpu_environment() -> dict:
    """The accelerator beside environment(): driver (nvidia-smi), CUDA build of torch, device properties,
    the optional GPU packages, and the commit ($MEDSFT_GIT_COMMIT where the copy has no .git)."""
    import os
    import subprocess
    from importlib import metadata

    info: dict = {"git_commit_env": os.environ.get("MEDSFT_GIT_COMMIT"), "packages": {}}
    for name in ("flash-attn", "liger-kernel", "triton", "kernels", "deepspeed", "bitsandbytes"):
        try:
            info["packages"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        if res.returncode == 0 and res.stdout.strip():
            name, driver, memory, power, clock = [x.strip() for x in res.stdout.splitlines()[0].split(",")][:5]
            info["nvidia_smi"] = {"name": name, "driver": driver, "memory": memory, "power_limit": power,
                                  "max_sm_clock": clock}
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["device"] = {"name": p.name, "total_memory_gib": round(p.total_memory / 2**30, 2),
                              "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
                              "count": torch.cuda.device_count()}
    except Exception as err:  # the record still says what was found
        info["torch_error"] = f"{type(err).__name__}: {err}"
    return info


def describe_gpu(gpu: dict) -> str:
    """One line: device · driver · CUDA · torch."""
    device = (gpu.get("device") or {}).get("name") or (gpu.get("nvidia_smi") or {}).get("name") or "cpu"
    driver = (gpu.get("nvidia_smi") or {}).get("driver")
    parts = [device, f"driver {driver}" if driver else None,
             f"CUDA {gpu['torch_cuda']}" if gpu.get("torch_cuda") else None, f"torch {gpu.get('torch')}"]
    return " · ".join(p for p in parts if p)


def cell(v) -> str:
    """A value as a results table shows it."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def append_summary(title: str, note: str, columns: list[str], rows: list[list], name: str = SUMMARY) -> Path:
    """Append one markdown section (a title line, a note, a table) to the results summary file."""
    results = results_dir()
    results.mkdir(parents=True, exist_ok=True)
    path = results / name

    lines = [f"## {title}", "", note, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    with path.open("a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n\n")
    return path


def random_model_dir(config_path: Path, root: Path, seed: int = 0) -> Path:
    """Random-weight model of a real architecture (medsft/memory/architectures/NAME.json) in the model dtype,
    initialised on the GPU (on the CPU without one), saved as safetensors with medsft's built-in tokenizer
    (its ids are below every real vocabulary size). Built once into root/NAME (an existing complete build
    is reused), atomically: a build that dies leaves nothing behind."""
    import json
    import shutil
    import tempfile

    out = Path(root) / Path(config_path).stem
    if (out / ".complete").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from medsft.model.builtin.tiny_model import build_tokenizer

    config = json.loads(Path(config_path).read_text())
    dtype = getattr(torch, config.get("torch_dtype", "bfloat16"))
    cfg = AutoConfig.for_model(**config)
    torch.manual_seed(seed)
    Path(root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=root))
    try:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        model.save_pretrained(tmp, safe_serialization=True)
        build_tokenizer().save_pretrained(tmp)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        (tmp / ".complete").write_text("")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def synthetic_rows(path: Path, rows: int, seed: int = 0) -> Path:
    """`rows` generated medical rows (medsft's builtin:tiny-medical generator, the dataset's columns) as JSONL:
    enough tokens for long packed sequences (about 105 tokens a row with the built-in tokenizer)."""
    import json

    from medsft.model.builtin.tiny_data import generate

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in generate(rows, seed=seed):
            f.write(json.dumps({k: row[k] for k in ("Question", "Complex_CoT", "Response")}) + "\n")
    return path


# ---------------------------------------------------------------- random weights built at load time (bench/proof.py)

RANDOM_MARKER = ".random-weights"  # a model folder with config and tokenizer only: weights are drawn when loaded


def random_weights_dir(config: dict, out: Path, seed: int = 0) -> Path:
    """A model folder with no weight file: config.json, medsft's built-in tokenizer and RANDOM_MARKER (the seed).
    Loaded through `install_random_weights_loader`, the weights are drawn on the load's device in memory: an
    8B model costs seconds of GPU time instead of a 16 GB safetensors write and read per machine."""
    import json

    from transformers import AutoConfig

    from medsft.model.builtin.tiny_model import build_tokenizer

    out = Path(out)
    if (out / RANDOM_MARKER).is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    cfg = AutoConfig.for_model(**config)
    cfg.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    (out / RANDOM_MARKER).write_text(json.dumps({"seed": seed}) + "\n")
    return out


def install_random_weights_loader() -> None:
    """From here on, `from_pretrained` of a `random_weights_dir` folder builds the model from its config with
    random weights (transformers' own init, seeded) on the device the load asks for (device_map's, else the
    CPU), and hands them to the real from_pretrained as its `state_dict`: quantization, device placement,
    dtype and attention go through transformers as for a checkpoint."""
    import functools
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

    original = PreTrainedModel.from_pretrained.__func__
    if getattr(original, "_medsft_random", False):
        return

    @functools.wraps(original)
    def from_pretrained(cls, path=None, *args, **kwargs):
        marker = Path(str(path)) / RANDOM_MARKER if path is not None else None
        if marker is None or not marker.is_file():
            return original(cls, path, *args, **kwargs)
        config = kwargs.pop("config", None)
        if not hasattr(config, "to_dict"):
            config = AutoConfig.from_pretrained(path)
        dtype = kwargs.get("dtype")
        dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
        dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32
        devices = set((kwargs.get("device_map") or {}).values()) if isinstance(kwargs.get("device_map"), dict) else set()
        device = next(iter(devices)) if len(devices) == 1 else "cpu"
        device = f"cuda:{device}" if isinstance(device, int) else device
        torch.manual_seed(json.loads(marker.read_text()).get("seed", 0))
        with torch.device(device):
            drawn = AutoModelForCausalLM.from_config(config, dtype=dtype)
        state = drawn.state_dict()
        del drawn
        for key in ("revision", "trust_remote_code"):  # about the files, and there are none
            kwargs.pop(key, None)
        try:
            return original(cls, None, *args, config=config, state_dict=state, **kwargs)
        finally:
            del state
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    from_pretrained._medsft_random = True
    PreTrainedModel.from_pretrained = classmethod(from_pretrained)
