"""The accelerate configs users run, run for real: `accelerate launch --config_file accelerate_configs/X.yaml`
with 2 processes on CPU (gloo / DeepSpeed's CPU accelerator), and two machines on one host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow  # real multi-process launches

STEPS = 4


def accelerate(config: str, *extra, out, overrides=(), processes=2, env=None, wait=True):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "accelerate_configs" / config),
           "--num_processes", str(processes), *extra, "-m", "medsft", "train", str(REPO / "recipes" / "tiny-cpu.yaml"),
           "--set", f"output.dir={out}", "--set", f"training.max_steps={STEPS}", "--set", "training.eval_steps=2", "--set", "training.logging_steps=2",
           *[x for o in overrides for x in ("--set", o)]]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=900)


def check_one_adapter(out, world_size: int, placement: str) -> dict:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    adapters = [p for p in out.rglob("adapter_model.safetensors") if "checkpoint-" not in str(p)]
    assert adapters == [out / "adapter" / "adapter_model.safetensors"], adapters
    assert not list(out.glob(".adapter*")), "temporary adapter directory left behind"
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    assert weights and all(t.numel() > 0 for t in weights.values()), "empty (unGathered ZeRO-3?) LoRA tensors"
    assert any(t.abs().sum() > 0 for k, t in weights.items() if "lora_B" in k), "lora_B never trained"
    from medsft.model.builtin.tiny_model import TINY_MODEL, builtin_model_dir

    base = AutoModelForCausalLM.from_pretrained(builtin_model_dir(TINY_MODEL), dtype=torch.float32)
    PeftModel.from_pretrained(base, out / "adapter")  # reloads
    m = json.loads((out / "adapter" / "manifest.json").read_text())
    assert m["launch"]["world_size"] == world_size
    assert m["placement"]["name"] == placement
    assert m["train"]["global_step"] == STEPS
    return m


@pytest.mark.parametrize("config,processes,placement,distributed", [
    ("single_gpu.yaml", 1, "cpu", "NO"),
    ("ddp.yaml", 2, "ddp-cpu", "MULTI_CPU"),
    ("zero2.yaml", 2, "zero2-cpu", "DEEPSPEED"),
    ("zero3.yaml", 2, "zero3", "DEEPSPEED"),
])
def test_config_trains(config, processes, placement, distributed, tmp_path, tiny_dir):
    out = tmp_path / "run"
    # a split seed no other test uses: this launch finds no tokenized cache and must build it once
    overrides = [f"data.split_seed={900 + processes}{len(config)}"] if config == "ddp.yaml" else []
    res = accelerate(config, out=out, processes=processes, overrides=overrides)
    assert res.returncode == 0, res.stderr[-4000:]
    m = check_one_adapter(out, processes, placement)
    if config == "ddp.yaml":  # prepared once by the main process, loaded by the other rank: said once, all recorded
        assert res.stdout.count("data: tokenized and cached to") == 1 and "loaded tokenized splits" not in res.stdout
        by_rank = m["data"]["cache_by_rank"]
        assert "tokenized and cached to" in by_rank[0][0] and "loaded tokenized splits from cache" in by_rank[1][0]
    assert m["launch"]["distributed_type"] == distributed
    assert res.stdout.count("adapter saved to") == 1, "only the main process reports"
    assert res.stderr.count("notice: attention: sdpa") == 1, "a notice printed on more than one rank"
    assert res.stdout.count(f"step {STEPS}/{STEPS} |") == 1, "one progress display, each step once"
    if config == "zero3.yaml":
        assert m["placement"]["device_map"] is None and m["placement"]["use_reentrant"]
        assert m["placement"]["quant_storage"] == "float32"  # = the model dtype of tiny-cpu
    if processes == 2:
        seen = json.loads((out / "rows_seen.json").read_text())
        assert set(seen) == {"0", "1"}
        assert seen["0"] and seen["1"] and not set(seen["0"]) & set(seen["1"]), "ranks trained overlapping rows"


def test_two_machines_on_one_host(tmp_path, tiny_dir, medsft_env):
    """Two machines of two processes. The second machine's medsft cache is its own (a node-local disk, the built
    model shared): it cannot see the tokenized data the main process cached, so its first rank prepares the data
    while its other rank waits and then loads it; all four train one adapter on disjoint rows."""
    out = tmp_path / "run"
    node_local = tmp_path / "node1-home"
    node_local.mkdir()
    (node_local / "models").symlink_to(medsft_env / "models")
    port = str(free_port())
    common = ["--num_machines", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", port]
    procs = [accelerate("ddp.yaml", *common, "--machine_rank", str(rank), out=out, processes=4, wait=False,
                        env={"MEDSFT_HOME": str(node_local)} if rank == 1 else None)
             for rank in (0, 1)]
    results = [p.communicate(timeout=900) for p in procs]
    for p, (_, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-4000:]
    m = check_one_adapter(out, 4, "ddp-cpu")
    assert m["launch"]["num_processes"] == 4
    seen = [set(rows) for rows in json.loads((out / "rows_seen.json").read_text()).values()]
    assert len(seen) == 4 and sum(map(len, seen)) == len(set().union(*seen))
    second = m["data"]["cache_by_rank"][2:]  # ranks 2 and 3: the second machine
    assert [" ".join(lines).count("tokenized and cached") for lines in second] == [1, 0], second
    assert " ".join(second[1]).count("loaded tokenized splits from cache") == 1, second
    prepared = [p.parent.name for p in (node_local / "datasets").glob("*/medsft.json")]
    assert prepared and all(p in {e.name for e in (medsft_env / "datasets").iterdir()} for p in prepared)


def test_impossible_combination_fails_fast(tmp_path):
    t0 = time.monotonic()
    res = accelerate("zero3.yaml", out=tmp_path / "run", overrides=["quantization.bits=8"])
    elapsed = time.monotonic() - t0
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ZeRO-3 with quantization.bits: 8" in errors[0], res.stderr
    assert not (tmp_path / "run").exists()
    print(f"impossible combination refused in {elapsed:.1f}s through accelerate launch")
