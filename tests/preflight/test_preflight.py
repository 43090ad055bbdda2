"""Memory preflight: weight rows against hand computation for three real architectures, ZeRO-3/FSDP
sharding and offload, the checkpointing terms, offline architectures, the launch seen by the command and the
training gate, and the won't-fit → suggestions → fits loop through the CLI."""

from __future__ import annotations

import json

import pytest

from medsft.memory.model import Arch, Setup, estimate, layer_activation_bytes
from tests.conftest import REPO, run_cli, run_cli_here

CONFIGS = REPO / "medsft" / "memory" / "architectures"
DQ = 0.5 + 1 / 64 + 4 / (64 * 256)  # NF4 + double-quantized absmax, bytes per weight


def arch(name: str) -> Arch:
    return Arch.from_config(json.loads((CONFIGS / f"{name}.json").read_text()))


# hand computation: L·(q + k + v + o + gate + up + down) and the unquantized parts
HAND = {
    "qwen3-0.6b": dict(p_lin=28 * (1024 * 2048 + 2 * 1024 * 1024 + 2048 * 1024 + 3 * 1024 * 3072),
                       unq=151936 * 1024 + 57 * 1024),  # tied embeddings, 2·28+1 norms
    "llama3.1-8b": dict(p_lin=32 * (4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 + 3 * 4096 * 14336),
                        unq=2 * 128256 * 4096 + 65 * 4096),
    "llama3.1-70b": dict(p_lin=80 * (8192 * 8192 + 2 * 8192 * 1024 + 8192 * 8192 + 3 * 8192 * 28672),
                         unq=2 * 128256 * 8192 + 161 * 8192),
}


@pytest.mark.parametrize("name", HAND)
def test_weight_rows_match_hand_computation(name):
    a = arch(name)
    hand = HAND[name]
    assert a.linear_params() == hand["p_lin"]
    est = estimate(a, Setup(bits=4))
    assert est.get("base weights (quantized)") == pytest.approx(hand["p_lin"] * DQ)
    assert est.get("embeddings, lm_head, norms") == pytest.approx(hand["unq"] * 2)
    assert estimate(a, Setup(bits=None)).get("base weights") == pytest.approx(hand["p_lin"] * 2)
    assert estimate(a, Setup(bits=4, double_quant=False)).get("base weights (quantized)") == \
        pytest.approx(hand["p_lin"] * (0.5 + 4 / 64))


def test_known_sizes():
    # Llama-3.1-8B: 8.03B parameters in all; LoRA r=16 on all linear layers: 41,943,040
    a = arch("llama3.1-8b")
    assert (a.linear_params() + 2 * 128256 * 4096 + 65 * 4096) / 1e9 == pytest.approx(8.03, abs=0.01)
    assert estimate(a, Setup(rank=16)).get("LoRA parameters") == 41_943_040 * 2


@pytest.mark.parametrize("name", HAND)
def test_sharding_divides_what_is_partitioned(name):
    a = arch(name)
    one = estimate(a, Setup(world_size=8))
    z3 = estimate(a, Setup(world_size=8, shard_params=True, zero_stage=3, optimizer="deepspeed"))
    for row in ("base weights (quantized)", "embeddings, lm_head, norms", "LoRA parameters", "LoRA gradients"):
        assert z3.get(row) == pytest.approx(one.get(row) / 8), row
    assert z3.get("optimizer states") == pytest.approx(one.get("LoRA parameters") / 2 * 12 / 8)
    assert z3.get("gathered layers") > 0 and z3.get("gathered lm_head") == a.vocab * a.hidden * 2
    assert z3.phase_bytes("layer backward") == one.phase_bytes("layer backward")  # activations are not sharded


def llama_layer_bytes_by_hand(h, heads, kd, i) -> int:
    """Bytes per token one Llama layer keeps for its backward (bf16, bf16 LoRA r=16 on all seven linears):
    norms and residuals, softmax statistics per head, the linears' inputs and outputs, LoRA's rank-16 inputs."""
    ad = h  # Llama's attention width is its hidden size
    return 8 * h + 8 + 4 * heads + 2 * (2 * h + 2 * ad + 2 * kd + 4 * i + ad) + 16 * 7 * 2


LLAMA_LAYERS = {"llama3.1-8b": (4096, 32, 1024, 14336), "llama3.1-70b": (8192, 64, 1024, 28672)}


@pytest.mark.parametrize("name", HAND)
def test_checkpointing_keeps_only_layer_inputs(name):
    """With checkpointing a layer keeps its bf16 input only; without, everything its backward reads."""
    a = arch(name)
    on = estimate(a, Setup(checkpointing=True, micro_batch=2, max_length=1024)).get("kept activations")
    t = 2 * 1024
    assert on == pytest.approx(t * (a.layers * 2 * a.hidden + 4 * a.hidden + 8))
    if name in LLAMA_LAYERS:
        off = estimate(a, Setup(checkpointing=False, micro_batch=2, max_length=1024)).get("kept activations")
        assert off == pytest.approx(t * (a.layers * llama_layer_bytes_by_hand(*LLAMA_LAYERS[name]) + 4 * a.hidden + 8))


def test_activation_offloading_keeps_two_layers_on_the_device():
    """TRL's activation_offloading: the recipe's setting reaches the estimate, and the kept activations are two
    layers' worth (the one in its backward and the one prefetched) instead of every layer's."""
    from medsft.launch.detect import from_env
    from medsft.recipe.files import load_recipe
    from medsft.train.runspec import resolve

    a = arch("llama3.1-8b")
    recipe = load_recipe(REPO / "recipes" / "llama3.1-8b.yaml", [
        "training.activation_offloading=true", "training.activation_checkpointing=false",
        "training.per_device_train_batch_size=2", "training.max_length=1024"])
    setup = resolve(recipe, from_env(cuda=True, num_gpus=1), kernels="off").memory_setup()
    assert setup.offload_activations
    t, e = 2 * 1024, layer_activation_bytes(a, setup)
    assert estimate(a, setup).get("kept activations") == pytest.approx(t * (2 * e + 4 * a.hidden + 8))
    everything = estimate(a, setup.replace(offload_activations=False)).get("kept activations")
    assert everything == pytest.approx(t * (a.layers * e + 4 * a.hidden + 8))


def test_llama_8b_layer_terms():
    """The per-layer activation formula for Llama-3.1-8B, by hand."""
    a = arch("llama3.1-8b")
    by_hand = llama_layer_bytes_by_hand(*LLAMA_LAYERS["llama3.1-8b"])
    assert layer_activation_bytes(a, Setup()) == by_hand
    h, ad, i = 4096, 4096, 14336
    ins = 3 * h + ad + 2 * h + i  # inputs of q, k, v, o, gate, up, down
    assert layer_activation_bytes(a, Setup(dropout=0.05)) == by_hand + ins * 3  # bf16 copy + bool mask


def test_loss_phase_is_a_tile_not_the_logits():
    a = arch("qwen3-0.6b")
    est = estimate(a, Setup(micro_batch=8, max_length=2048))
    assert est.get("head tile") == 4096 * 32768 * 2  # 256 MiB, whatever the number of tokens
    full = estimate(a, Setup(micro_batch=8, max_length=2048, head="full")).get("logits and loss")
    assert full == 8 * 2048 * a.vocab * 12 and full > 40 * est.get("head tile")


def put_in_hub_cache(home, repo_id: str, config: dict) -> None:
    """The layout huggingface_hub reads offline: refs/main → snapshots/<commit>/config.json."""
    base = home / "hf" / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(commit)
    (base / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    (base / "snapshots" / commit / "config.json").write_text(json.dumps(config))


def test_8b_on_16gib_gets_suggestions_that_fit(medsft_env):
    put_in_hub_cache(medsft_env, "meta-llama/Llama-3.1-8B-Instruct",
                     json.loads((CONFIGS / "llama3.1-8b.json").read_text()))
    recipe = REPO / "recipes" / "llama3.1-8b.yaml"
    res = run_cli("preflight", recipe, "--gpu-memory", "16GiB", env={"COLUMNS": "200"}, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "won't fit" in res.stdout
    tips = [line for line in res.stdout.splitlines() if line.strip().startswith("→")]
    assert len(tips) == 3, res.stdout
    for tip in tips:
        sets = [part.split()[0] for part in tip.split("--set ")[1:]]
        assert sets, tip
        # each suggestion through the same CLI main, in this process (a subprocess each would pay torch's start-up)
        ok = run_cli_here("preflight", recipe, "--gpu-memory", "16GiB", *[x for s in sets for x in ("--set", s)],
                          cwd=REPO)
        assert ok.returncode == 0 and "verdict: fits" in ok.stdout, (tip, ok.stdout, ok.stderr)


def test_preflight_without_gpu_needs_gpu_memory():
    res = run_cli_here("preflight", REPO / "recipes" / "tiny-cpu.yaml", timeout=120)
    assert res.returncode == 2 and "pass --gpu-memory SIZE" in res.stderr


ZERO3_X8 = {"WORLD_SIZE": "8", "RANK": "0", "LOCAL_RANK": "0", "ACCELERATE_USE_DEEPSPEED": "true",
            "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true"}


@pytest.fixture
def llama70b_recipe(tmp_path):
    """A Llama-3.1-70B-shaped QLoRA recipe at micro-batch 1 × 2048 (the architecture medsft ships)."""
    model = tmp_path / "llama-70b"
    model.mkdir()
    (model / "config.json").write_text((CONFIGS / "llama3.1-70b.json").read_text())
    recipe = tmp_path / "llama70b.yaml"
    recipe.write_text(f"model:\n  name: {model}\nlora:\n  target_modules: all-linear\ntraining:\n"
                      "  per_device_train_batch_size: 1\n  max_length: 2048\n  bf16: true\n")
    return recipe


def test_preflight_inside_a_zero3_launch_sees_it(llama70b_recipe):
    """Inside an 8-process ZeRO-3 launch (the variables accelerate exports) the 70B recipe fits 40 GiB; the
    same recipe on one 40 GiB GPU is refused."""
    inside = run_cli("preflight", llama70b_recipe, "--gpu-memory", "40GiB", env={**ZERO3_X8, "COLUMNS": "200"},
                     timeout=120)
    assert inside.returncode == 0 and "verdict: fits" in inside.stdout, inside.stdout + inside.stderr
    assert "ZeRO-3 over 8 processes" in inside.stdout
    alone = run_cli_here("preflight", llama70b_recipe, "--gpu-memory", "40GiB", env={"COLUMNS": "200"}, timeout=120)
    assert alone.returncode == 2 and "won't fit" in alone.stdout, alone.stdout + alone.stderr


def test_training_gate_uses_the_launch(llama70b_recipe):
    from medsft.errors import MedsftError
    from medsft.launch.detect import from_env
    from medsft.recipe.files import load_recipe
    from medsft.train.run import preflight_gate
    from medsft.train.runspec import resolve

    recipe = load_recipe(llama70b_recipe)
    zero3 = resolve(recipe, from_env(ZERO3_X8, cuda=True, num_gpus=8), kernels="off")
    preflight_gate(zero3, force=False, gpu_memory="40GiB")  # fits: no exception
    one_gpu = resolve(recipe, from_env({}, cuda=True, num_gpus=1), kernels="off")
    with pytest.raises(MedsftError, match="won't fit"):
        preflight_gate(one_gpu, force=False, gpu_memory="40GiB")
    preflight_gate(one_gpu, force=True, gpu_memory="40GiB")  # --force trains anyway


def test_offload_lowers_the_estimate_by_the_offloaded_bytes(llama70b_recipe):
    from medsft.launch.detect import from_accelerate_config
    from medsft.recipe.files import load_recipe
    from medsft.train.runspec import resolve

    recipe = load_recipe(llama70b_recipe)
    configs = REPO / "accelerate_configs"
    a = arch("llama3.1-70b")
    plain = estimate(a, resolve(recipe, from_accelerate_config(str(configs / "zero3.yaml"), 8), "off").memory_setup())
    offload = estimate(a, resolve(recipe, from_accelerate_config(str(configs / "zero3_offload.yaml"), 8),
                                  "off").memory_setup())
    offloaded = sum(plain.get(row) for row in ("base weights (quantized)", "embeddings, lm_head, norms",
                                               "LoRA parameters", "optimizer states"))
    assert plain.allocated - offload.allocated == pytest.approx(offloaded)
    assert offload.get("gathered layers") == plain.get("gathered layers") > 0  # still gathered on the device


def test_fsdp2_is_sharded_like_zero3(llama70b_recipe):
    from medsft.launch.detect import from_accelerate_config
    from medsft.recipe.files import load_recipe
    from medsft.train.runspec import resolve

    recipe = load_recipe(llama70b_recipe)
    configs = REPO / "accelerate_configs"
    a = arch("llama3.1-70b")
    fsdp = estimate(a, resolve(recipe, from_accelerate_config(str(configs / "fsdp2.yaml"), 8), "off").memory_setup())
    zero3 = estimate(a, resolve(recipe, from_accelerate_config(str(configs / "zero3.yaml"), 8), "off").memory_setup())
    assert fsdp.get("base weights (quantized)") == zero3.get("base weights (quantized)")
    assert fsdp.get("gathered layers") == zero3.get("gathered layers")


def test_shipped_recipe_preflights_offline(tmp_path):
    """No network, no hub cache: the architectures medsft ships for its recipes are used, and said so."""
    res = run_cli("preflight", REPO / "recipes" / "llama3.1-8b.yaml", "--gpu-memory", "24GiB",
                  env={"HF_HOME": str(tmp_path / "empty-hf"), "COLUMNS": "200"}, timeout=120)
    assert res.returncode in (0, 2), res.stderr
    assert "from medsft's shipped architecture (no hub cache)" in res.stdout
    assert "verdict:" in res.stdout and "largest term:" in res.stdout
