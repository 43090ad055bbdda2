"""FSDP2 as far as a CPU machine allows: medsft's FSDP placement (4-bit with float quant storage, no
device_map) + PEFT LoRA, sharded per decoder layer with `fully_shard` on a real 2-process gloo mesh, trains
with falling loss, and the gathered full state dict saves one complete adapter that plain PEFT reloads.

accelerate itself routes FSDP to CUDA devices only; what runs only on GPUs (accelerate's FSDP2 preparation,
NCCL, the trainer's FULL_STATE_DICT save) is in tests/gpu. On CPUs an FSDP config trains as DDP over gloo
with a notice: tests/launch/test_user_configs.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow  # real multi-process launches

STEPS = 12


def test_fsdp2_shards_trains_and_saves_one_adapter(tmp_path, tiny_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from medsft.upstream import keep_4bit_trainable_layout

    out = tmp_path / "fsdp2"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(free_port()), str(REPO / "tests" / "launch" / "fsdp2_mesh_worker.py"), str(out), str(STEPS)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert r["sharded"], "decoder layers were not sharded (no DTensor parameters)"
        assert r["storage"] == ["torch.float32"], "4-bit weights must be stored in the model dtype under FSDP"
        assert r["trainable"] == ["lora_A", "lora_B"], "only LoRA weights may have gradients"
        assert r["packed"] == []
    losses = ranks[0]["losses"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses  # falls clearly (measured ~7.7 → ~5)
    assert ranks[0]["losses"] == ranks[1]["losses"], "ranks disagree on the mean loss"

    files = sorted(p.name for p in (out / "adapter").iterdir())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors"], files
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, quantization_config=bnb, dtype=torch.float32)
    plain = PeftModel.from_pretrained(base, out / "adapter").eval()
    keep_4bit_trainable_layout(plain)  # the layout the sharded model computed in
    saved = torch.load(out / "probe.pt")
    with torch.no_grad():
        again = plain(input_ids=saved["probe"]).logits
    # the same weights (gathered from both shards) and the same dequantized 4-bit values: fp32 rounding only
    assert torch.allclose(again, saved["logits"], atol=1e-4, rtol=0), (again - saved["logits"]).abs().max()
