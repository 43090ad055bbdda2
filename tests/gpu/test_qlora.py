"""One GPU, 4-bit QLoRA on a real architecture with random weights (Qwen3-0.6B shapes): trains with a falling
loss, records the attention that ran, saves an adapter plain PEFT reloads; killed with SIGKILL after a
checkpoint, the same command resumes to the uninterrupted run's adapter."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.gpu.conftest import TINY_RECIPE, check_adapter_reloads, logged_losses, train_cli

pytestmark = pytest.mark.gpu
STEPS, EVERY, KILL_AFTER = 16, 4, 4

# Resume tolerance. CPU (fp32, deterministic kernels): bit-for-bit up to fp32 rounding, as in
# tests/launch/test_zero_resume.py. GPU (bf16 LoRA weights, SDPA / flash-attention backward kernels that are not
# deterministic): max |diff| of any adapter weight ≤ 2e-3, i.e. about 16 bf16 ulps of lora_A's scale (|A| ≲ 0.03)
# or two Adam steps at lr 1e-3, while lora_B (zero at the start, so it is the learned update itself) must agree
# within 5% in L2 norm, and each resumed step's loss within 2%: a resume that lost the data order, the optimizer
# state or the schedule moves lora_B by the size of the updates (~100%), not by 5%.
MAX_DIFF = {"cpu": 1e-5, "cuda": 2e-3}
B_RELATIVE = {"cpu": 1e-4, "cuda": 0.05}
LOSS_RELATIVE = {"cpu": 1e-5, "cuda": 0.02}


def expected_attention(cuda: bool) -> str:
    """bf16 on an Ampere or newer GPU: flash_attention_2 when flash_attn imports, else torch's varlen kernel
    (torch >= 2.10); anywhere else medsft's SDPA."""
    if not cuda:
        return "sdpa"
    import torch

    if torch.cuda.get_device_capability()[0] < 8:
        return "sdpa"
    try:
        from flash_attn import flash_attn_varlen_func  # noqa: F401
    except Exception:
        major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
        return "varlen" if (major, minor) >= (2, 10) else "sdpa"
    return "flash_attention_2"


@pytest.fixture(scope="module")
def reference(target, tmp_path_factory):
    """The uninterrupted run: STEPS steps, a checkpoint every EVERY steps."""
    out = tmp_path_factory.mktemp("qlora-reference")
    t0 = time.perf_counter()
    res = train_cli(target, out, STEPS, save_every=EVERY)
    assert res.returncode == 0, res.stderr[-4000:]
    print(f"reference run: {time.perf_counter() - t0:.0f} s")
    return out


def test_single_gpu_qlora_trains_records_attention_and_reloads(target, reference):
    losses = logged_losses(reference)
    assert sorted(losses) == list(range(1, STEPS + 1))
    values = [losses[s] for s in sorted(losses)]
    print("losses:", " ".join(f"{v:.3f}" for v in values))
    assert all(math.isfinite(v) for v in values)
    first, last = sum(values[:4]) / 4, sum(values[-4:]) / 4
    assert last < first - 0.1, f"loss did not fall: first 4 steps {first:.3f}, last 4 {last:.3f}"

    adapter = reference / "adapter"
    manifest = json.loads((adapter / "manifest.json").read_text())
    ran = manifest["attn_implementation"]
    print(f"attention: {ran}; kernels: {manifest['kernels']}; placement: {manifest['placement']['name']}")
    assert ran == expected_attention(target.cuda)
    assert manifest["placement"]["name"] == ("single-gpu" if target.cuda else "cpu")
    assert manifest["placement"]["quant_storage"] == "uint8"
    assert manifest["precision"] == ("bf16" if target.cuda else "no")
    assert manifest["train"]["global_step"] == STEPS
    check_adapter_reloads(target, adapter)


def command(target, out) -> list[str]:
    sets = [x for s in target.overrides(out, STEPS, save_every=EVERY) for x in ("--set", s)]
    return [sys.executable, "-m", "medsft", "train", str(TINY_RECIPE), *sets]


def start(cmd) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_kill_9_then_same_command_resumes_to_the_same_adapter(target, reference, tmp_path):
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "run"
    proc = start(command(target, out))
    marker = out / f"checkpoint-{KILL_AFTER}" / "trainer_state.json"  # written last in a checkpoint
    deadline = time.monotonic() + 900
    while not marker.exists():
        assert proc.poll() is None, f"training ended before {marker} appeared:\n{proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"{marker} never appeared"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # as a node failure would
    proc.communicate()
    assert not (out / "adapter").exists(), "the run finished before it was killed: nothing was resumed"
    res = subprocess.run(command(target, out), cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                                       os.environ.get("PYTHONPATH")]))})
    assert res.returncode == 0, res.stderr[-4000:]
    assert "resuming from" in res.stdout
    resumed_from = json.loads((out / "adapter" / "manifest.json").read_text())["train"]["resumed_from"]
    print(f"killed after checkpoint-{KILL_AFTER}; resumed from {resumed_from}")

    kind = "cuda" if target.cuda else "cpu"
    ref = load_file(reference / "adapter" / "adapter_model.safetensors")
    got = load_file(out / "adapter" / "adapter_model.safetensors")
    assert ref.keys() == got.keys()
    max_diff = max((ref[k].float() - got[k].float()).abs().max().item() for k in ref)
    b_keys = [k for k in ref if "lora_B" in k]
    b_ref = torch.cat([ref[k].float().flatten() for k in b_keys])
    b_got = torch.cat([got[k].float().flatten() for k in b_keys])
    b_relative = ((b_got - b_ref).norm() / b_ref.norm()).item()
    ref_losses, got_losses = logged_losses(reference), logged_losses(out)
    resumed_steps = [s for s in range(int(resumed_from.rsplit("-", 1)[1]) + 1, STEPS + 1)]
    loss_relative = max(abs(got_losses[s] - ref_losses[s]) / abs(ref_losses[s]) for s in resumed_steps)
    print(f"resumed vs uninterrupted adapter: max |diff| {max_diff:.3g} (tolerance {MAX_DIFF[kind]:g}); lora_B "
          f"relative L2 {b_relative:.3g} (tolerance {B_RELATIVE[kind]:g}); losses of steps {resumed_steps[0]}-{STEPS} "
          f"max relative diff {loss_relative:.3g} (tolerance {LOSS_RELATIVE[kind]:g})")
    assert max_diff <= MAX_DIFF[kind]
    assert b_relative <= B_RELATIVE[kind]
    assert loss_relative <= LOSS_RELATIVE[kind]
