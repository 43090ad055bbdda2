"""Memory preflight: will this recipe fit on this launch, per device, before any weight is loaded?

Why: an 8B QLoRA run that dies of OOM after 20 minutes of loading and tokenizing is the most common
waste of GPU time. The architecture comes from the model's config.json (a local directory or the
hub cache; no weights, no network), the rest from the recipe and the launch (placement.py).

Formulas (bytes per device; B = micro-batch, S = max_length, T = B·S tokens, L layers, H hidden,
I intermediate, A/K attention/KV heads, D head dim, V vocab, r LoRA rank, N processes sharing a ZeRO
partition):

- Decoder linear weights  P_lin = L·(H·A·D + 2·H·K·D + A·D·H + 3·H·I)   (gated MLP: gate, up, down)
  - 4-bit NF4: P_lin/2 (two 4-bit codes per byte) + quantization constants: one absmax per 64 weights;
    fp32 absmax = 4/64 B/weight, double quantization stores it in 8 bits with an fp32 constant per
    256 absmax: 1/64 + 4/(64·256) B/weight = 0.127 bits/weight (QLoRA paper, Dettmers et al. 2023, §3).
  - 8-bit (LLM.int8, bitsandbytes): P_lin bytes + one fp32 scale per output row.
  - unquantized: 2·P_lin (bf16/fp16) or 4·P_lin (fp32).
- Unquantized parts (kept in the model dtype by bitsandbytes): embeddings V·H, lm_head V·H unless tied,
  RMSNorm weights (2L+1)·H.
- LoRA: for each targeted linear (in, out): r·(in + out) parameters. TRL keeps a quantized model's LoRA
  weights in bf16 (2 B), otherwise fp32 (4 B). Gradients: same size. AdamW (torch): 2 moments in the
  parameter dtype. DeepSpeed ZeRO: fp32 master copy + 2 fp32 moments = 12 B/param, partitioned over N
  (ZeRO-2 and 3), in CPU memory with optimizer offload.
- Activations per layer and token, in elements (dtype 2 B): E = 4H + 2·A·D + 2·K·D + 4I + n_t·r + 2A
  (norm inputs/outputs and residuals, q/k/v and attention output, gate/up/act/product, LoRA
  intermediates for n_t targeted modules per layer, and the fp32 softmax log-sum-exp per head, which
  takes the room of 2 bf16 elements).
  SDPA/flash attention do not store the S×S scores; eager attention adds 2·A·S² per sequence.
  - with gradient checkpointing: every layer keeps only its input, one layer is recomputed at a time:
    2·T·(L·H + E)
  - without: 2·T·L·E. So turning checkpointing off multiplies the row by L·E / (L·H + E).
  (after Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
  adapted to gated MLPs, GQA and LoRA.)
- Logits and loss: TRL's fused LM head computes log-probabilities in tiles of at most 32,768 vocabulary
  columns, never the full T×V logits: T·min(V, 32768)·(2 + 4) B for a bf16 tile and its fp32
  log-softmax, plus 5 fp32 per-token outputs (log-prob, entropy, top-1, …): 20·T B.
- ZeRO-3 also partitions the (bf16-stored) quantized weights, the unquantized parts and LoRA over N.
- Runtime overhead: CUDA context and kernels (~0.5 GiB) plus 10% allocator fragmentation; reported
  separately so that `total (allocated)` can be compared with torch.cuda.max_memory_allocated (bench/).
Verdict: fits below 85% of the device, tight up to 100%, won't fit above.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from medsft.errors import MedsftError

GiB = 1024**3
TILE_COLUMNS = 32768
CONTEXT_BYTES = 0.5 * GiB
FRAGMENTATION = 0.10
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_MODULES = ("gate_proj", "up_proj", "down_proj")


@dataclass
class Arch:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, cfg: dict) -> "Arch":
        cfg = cfg.get("text_config", cfg)
        try:
            h, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
            return cls(hidden=h, intermediate=int(cfg["intermediate_size"]), layers=int(cfg["num_hidden_layers"]),
                       heads=heads, kv_heads=int(cfg.get("num_key_value_heads") or heads),
                       head_dim=int(cfg.get("head_dim") or h // heads), vocab=int(cfg["vocab_size"]),
                       tied=bool(cfg.get("tie_word_embeddings", False)))
        except KeyError as err:
            raise MedsftError(f"config.json lacks {err.args[0]!r}", "preflight supports decoder-only "
                              "transformers (Llama, Qwen, Mistral …)", "model.name") from None

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder block."""
        h, a, k, d, i = self.hidden, self.heads, self.kv_heads, self.head_dim, self.intermediate
        return {"q_proj": (h, a * d), "k_proj": (h, k * d), "v_proj": (h, k * d), "o_proj": (a * d, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_params(self) -> int:
        return self.layers * sum(i * o for i, o in self.linear_shapes().values())


@dataclass
class Setup:
    """Everything the estimate depends on besides the architecture."""

    bits: int | None = 4
    double_quant: bool = True
    dtype: str = "bfloat16"
    rank: int = 16
    targets: object = "all-linear"
    micro_batch: int = 1
    max_length: int = 2048
    checkpointing: bool = True
    attention: str = "sdpa"
    world_size: int = 1
    zero_stage: int | None = None
    offload_optimizer: bool = False
    offload_params: bool = False

    def targeted(self, arch: Arch) -> list[str]:
        names = list(arch.linear_shapes())
        if self.targets == "all-linear":
            return names
        return [n for n in names if any(str(t).split(".")[-1] == n for t in self.targets)]


@dataclass
class Estimate:
    rows: list[tuple[str, float, str]] = field(default_factory=list)  # (name, bytes, how)

    def add(self, name: str, nbytes: float, how: str) -> None:
        self.rows.append((name, float(nbytes), how))

    def get(self, name: str) -> float:
        return next(b for n, b, _ in self.rows if n == name)

    @property
    def allocated(self) -> float:
        return sum(b for n, b, _ in self.rows if n != "runtime overhead")

    @property
    def total(self) -> float:
        return sum(b for _, b, _ in self.rows)


def estimate(arch: Arch, s: Setup) -> Estimate:
    est = Estimate()
    dt = DTYPE_BYTES[s.dtype]
    zero3 = s.zero_stage == 3
    n_shard = s.world_size if zero3 else 1
    p_lin = arch.linear_params()

    if s.bits == 4:
        const = (1 / 64 + 4 / (64 * 256)) if s.double_quant else 4 / 64
        base, how = p_lin * (0.5 + const), f"{p_lin / 1e9:.2f}B weights × (0.5 + {const:.4f}) B"
    elif s.bits == 8:
        rows = arch.layers * sum(o for _, o in arch.linear_shapes().values())
        base, how = p_lin + 4 * rows, f"{p_lin / 1e9:.2f}B weights × 1 B + fp32 row scales"
    else:
        base, how = p_lin * dt, f"{p_lin / 1e9:.2f}B weights × {dt} B"
    kept = 0 if s.offload_params else 1  # offloaded parameters live in CPU memory, streamed in when used
    where = " → offloaded to CPU" if s.offload_params else ""
    est.add("base weights (quantized)" if s.bits else "base weights", kept * base / n_shard,
            how + (f" / {n_shard} (ZeRO-3)" if zero3 else "") + where)

    unq = arch.vocab * arch.hidden * (1 if arch.tied else 2) + (2 * arch.layers + 1) * arch.hidden
    est.add("embeddings, lm_head, norms", kept * unq * dt / n_shard,
            f"V·H{'' if arch.tied else ' ×2 (untied)'} + norms, {dt} B" + (f" / {n_shard}" if zero3 else "") + where)

    shapes = arch.linear_shapes()
    targeted = s.targeted(arch)
    lora = arch.layers * sum(s.rank * (shapes[t][0] + shapes[t][1]) for t in targeted)
    lb = 2 if s.bits else 4
    est.add("LoRA parameters", kept * lora * lb / n_shard, f"{lora / 1e6:.1f}M × {lb} B" + where)
    if s.zero_stage:
        part = s.world_size if s.zero_stage >= 2 else 1
        est.add("LoRA gradients", lora * lb / part, f"{lb} B/param / {part} (ZeRO-{s.zero_stage})")
        opt = 0 if s.offload_optimizer else lora * 12 / s.world_size
        est.add("optimizer (AdamW)", opt, "offloaded to CPU" if s.offload_optimizer else
                f"fp32 master + 2 moments = 12 B/param / {s.world_size}")
    else:
        est.add("LoRA gradients", lora * lb, f"{lb} B/param")
        est.add("optimizer (AdamW)", lora * 2 * lb, f"2 moments × {lb} B/param")

    t = s.micro_batch * s.max_length
    h, a, k, d, i = arch.hidden, arch.heads, arch.kv_heads, arch.head_dim, arch.intermediate
    per_layer = 4 * h + 2 * a * d + 2 * k * d + 4 * i + len(targeted) * s.rank + 2 * a
    act_bytes_layer = 2 * t * per_layer
    if s.attention == "eager":
        act_bytes_layer += 2 * a * s.max_length**2 * s.micro_batch
    if s.checkpointing:
        act = 2 * t * arch.layers * h + act_bytes_layer
        how = f"{t:,} tokens × (L·H kept + one layer recomputed)"
    else:
        act = arch.layers * act_bytes_layer
        how = f"{t:,} tokens × L layers × {per_layer:,} elements × 2 B"
    est.add("activations", act, how)

    cols = min(arch.vocab, TILE_COLUMNS)
    est.add("logits and loss (fp32)", t * cols * 6 + 20 * t, f"{t:,} tokens × {cols:,} vocab tile × 6 B")
    est.add("runtime overhead", CONTEXT_BYTES + FRAGMENTATION * est.allocated, "CUDA context + 10% fragmentation")
    return est


def verdict(total: float, device: float) -> str:
    if total <= 0.85 * device:
        return "fits"
    return "tight" if total <= device else "won't fit"


# ------------------------------------------------------------------ inputs


def read_config(model_name: str, revision: str | None = None) -> dict:
    """config.json of a built-in, local or hub-cached model; never downloads."""
    from medsft.tiny_model import builtin_model_dir, is_builtin

    if is_builtin(model_name):
        path = builtin_model_dir(model_name) / "config.json"
    elif Path(model_name).expanduser().is_dir():
        path = Path(model_name).expanduser() / "config.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model_name, "config.json", revision=revision)
        if not isinstance(found, str):
            raise MedsftError(f"config.json of {model_name!r} is not in the hub cache",
                              f"download it once: huggingface-cli download {model_name} config.json", "model.name")
        path = Path(found)
    return json.loads(Path(path).read_text())


def parse_size(text: str) -> float:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(GiB|GB|G|MiB|MB|M|TiB|TB|T)?\s*", str(text))
    if not m or float(m.group(1)) <= 0:
        raise MedsftError(f"--gpu-memory {text!r} is not a positive size", "write e.g. 80GiB or 24GB")
    unit = (m.group(2) or "GiB").upper()
    scale = {"GIB": GiB, "G": GiB, "GB": 1e9, "MIB": 2**20, "M": 2**20, "MB": 1e6, "TIB": 2**40, "T": 2**40,
             "TB": 1e12}[unit]
    return float(m.group(1)) * scale


def setup_from(spec) -> Setup:
    """The estimate's inputs, read from the resolved run (launch included)."""
    recipe, launch = spec.recipe, spec.launch
    return Setup(
        bits=recipe.quantization.bits, double_quant=recipe.quantization.double_quant, dtype=recipe.model.dtype,
        rank=recipe.lora.rank, targets=recipe.lora.target_modules, micro_batch=spec.micro_batch,
        max_length=int(spec.recipe.training.get("max_length") or 1024), checkpointing=spec.checkpointing,
        attention="eager" if spec.attention == "eager" else "sdpa",
        world_size=launch.world_size if launch.distributed != "none" else 1,
        zero_stage=3 if launch.sharded_params else launch.zero_stage,
        offload_optimizer=launch.offload_optimizer, offload_params=launch.offload_params,
    )


def suggestions(arch: Arch, s: Setup, device: float, gradient_accumulation: int) -> list[tuple[str, list[str], float]]:
    """Up to three changes, cheapest first, each re-estimated and each making the run fit."""
    out = []

    def tryit(label, overrides, **changes):
        new = _replace(s, **changes)
        total = estimate(arch, new).total
        if verdict(total, device) == "fits":
            out.append((label, overrides, total))
            return True
        return False

    if not s.checkpointing:
        tryit("turn gradient checkpointing on", ["training.gradient_checkpointing=true"], checkpointing=True)
    mb = s.micro_batch
    while mb > 1:
        mb //= 2
        ga = gradient_accumulation * (s.micro_batch // mb)
        if tryit(f"micro-batch {mb} with accumulation {ga} (same effective batch)",
                 [f"training.per_device_train_batch_size={mb}", f"training.gradient_accumulation_steps={ga}"],
                 micro_batch=mb):
            break
    if s.bits != 4:
        tryit("4-bit NF4 quantization", ["quantization.bits=4"], bits=4)
    length = s.max_length
    while length > 256:
        length //= 2
        if tryit(f"max_length {length} (longer rows are dropped)", [f"training.max_length={length}"],
                 max_length=length):
            break
    if len(out) < 3 and s.micro_batch > 1:
        for length in (s.max_length // 2, s.max_length // 4):
            if length >= 256 and tryit(f"micro-batch 1, accumulation {gradient_accumulation * s.micro_batch}, "
                                       f"max_length {length}",
                                       ["training.per_device_train_batch_size=1",
                                        f"training.gradient_accumulation_steps={gradient_accumulation * s.micro_batch}",
                                        f"training.max_length={length}"], micro_batch=1, max_length=length):
                break
    if len(out) < 3 and s.world_size > 1 and s.zero_stage != 3:
        tryit(f"ZeRO-3 over {s.world_size} processes", ["(launch with accelerate_configs/zero3.yaml)"], zero_stage=3)
    return out[:3]


def _replace(obj, **changes):
    new = copy.copy(obj)
    for k, v in changes.items():
        setattr(new, k, v)
    return new


# ------------------------------------------------------------------ command and training hook


def device_memory(gpu_memory: str | None) -> tuple[float, str]:
    if gpu_memory:
        return parse_size(gpu_memory), "as given by --gpu-memory"
    import torch

    if torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info()
        return float(free), f"free on {torch.cuda.get_device_name()}"
    raise MedsftError("no GPU here to measure", "pass --gpu-memory SIZE (e.g. 80GiB) to say what to assume")


def run_preflight(spec, *, gpu_memory=None, console=None):
    """Compute, print (rich table), and return (Estimate, verdict, suggestions)."""
    from rich.table import Table

    from medsft.console import rich_console

    recipe = spec.recipe
    console = console or rich_console()
    arch = Arch.from_config(read_config(recipe.model.name, recipe.model.revision))
    s = setup_from(spec)
    device, source = device_memory(gpu_memory)
    est = estimate(arch, s)
    v = verdict(est.total, device)
    table = Table(title=f"memory per device: {recipe.model.name} · {spec.launch.describe()}"
                        f" · micro-batch {s.micro_batch} × {s.max_length} tokens")
    table.add_column("part")
    table.add_column("GiB", justify="right")
    table.add_column("how")
    for name, nbytes, how in est.rows:
        table.add_row(name, f"{nbytes / GiB:.2f}", how)
    table.add_row("[bold]total[/bold]", f"[bold]{est.total / GiB:.2f}[/bold]",
                  f"device: {device / GiB:.1f} GiB {source}")
    console.print(table)
    style = {"fits": "green", "tight": "yellow", "won't fit": "red"}[v]
    console.print(f"verdict: [{style}]{v}[/{style}] ({est.total / GiB:.1f} of {device / GiB:.1f} GiB per device; "
                  f"{spec.launch.describe()})", soft_wrap=True)
    tips = []
    if v == "won't fit":
        tips = suggestions(arch, s, device, int(recipe.training.get("gradient_accumulation_steps", 1)))
        for label, overrides, total in tips:
            console.print(f"  → {label}: {' '.join('--set ' + o if '=' in o else o for o in overrides)} "
                          f"({total / GiB:.1f} GiB)", soft_wrap=True)
        if not tips:
            console.print("  → no single change fits: use more GPUs with ZeRO-3 or a smaller model")
    return est, v, tips
