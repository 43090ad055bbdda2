"""Liger's fused kernels (model.kernels: liger) on and off give the same training loss within tolerance on a
real architecture, and the manifest records what ran."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.gpu.conftest import cpu_only_skip, logged_losses, train_cli

pytestmark = pytest.mark.gpu
STEPS = 8
# Liger's RMSNorm/RoPE/SwiGLU kernels round differently from PyTorch's bf16 modules: the first step (same
# weights, same batch) within 1%, and every later step (trajectories drift apart slowly) within 3%.
FIRST_STEP, EVERY_STEP = 0.01, 0.03


def test_liger_on_and_off_give_the_same_loss(target, tmp_path):
    cpu_only_skip(target, "Liger's kernels are Triton code and run on CUDA only (medsft turns them off elsewhere)")
    if importlib.util.find_spec("liger_kernel") is None:
        pytest.skip("liger-kernel is not installed (pip install 'medsft[kernels]', or bundle the kernels extra)")
    losses, kernels = {}, {}
    for choice in ("off", "liger"):
        out = tmp_path / choice
        res = train_cli(target, out, STEPS, f"model.kernels='{choice}'")
        assert res.returncode == 0, res.stderr[-4000:]
        kernels[choice] = json.loads((out / "adapter" / "manifest.json").read_text())["kernels"]
        losses[choice] = logged_losses(out)
    assert kernels == {"off": "off", "liger": "liger"}, kernels
    off, on = losses["off"], losses["liger"]
    assert sorted(off) == sorted(on) == list(range(1, STEPS + 1))
    relative = [abs(on[s] - off[s]) / abs(off[s]) for s in sorted(off)]
    print("loss off:   " + " ".join(f"{off[s]:.4f}" for s in sorted(off)))
    print("loss liger: " + " ".join(f"{on[s]:.4f}" for s in sorted(on)))
    print(f"relative difference: first step {relative[0]:.2g} (tolerance {FIRST_STEP}), largest {max(relative):.2g} "
          f"(tolerance {EVERY_STEP})")
    assert relative[0] <= FIRST_STEP
    assert max(relative) <= EVERY_STEP
