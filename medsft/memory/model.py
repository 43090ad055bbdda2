"""The memory model behind the preflight: bytes per device, term by term, from the code that allocates.

Why: an estimate that is right only because two errors cancel misleads the first time the settings move.
Each term below names the allocation it stands for; phases that never coexist are maxed, not summed:

    peak allocated = persistent + gathered + max(forward, layer backward, loss, evaluation, optimizer step)

Notation (per device): T = micro-batch × max_length tokens, N_c = T × trained share (tokens with labels),
L layers, H hidden, I intermediate, A/K attention/KV heads, D head dim, V vocabulary, r LoRA rank, n_t
targeted linears per layer, b = model-dtype bytes (bf16: 2), b_l = LoRA parameter bytes, S shards.

Persistent
- 4-bit base weights (bitsandbytes NF4): P_lin·(0.5 + c) with c = 1/64 + 4/(64·256) B/weight for double-quantized
  absmax (QLoRA paper §3); 8-bit: P_lin + 4 B per output row; unquantized: P_lin·b.
- Embeddings, lm_head (unless tied), RMSNorm weights: (V·H·(1|2) + (2L+1)·H)·b (fp32 when a kbit preparation upcasts).
- LoRA: r·(in+out) per targeted linear; TRL keeps a quantized model's adapters in bf16 (b_l = 2), PEFT alone in fp32.
- Gradients b_l per LoRA parameter. AdamW (torch): 2 moments in the parameter dtype; DeepSpeed: fp32 master +
  2 fp32 moments = 12 B/param. ZeRO-2/3 and FSDP divide gradients and optimizer by S; ZeRO-3/FSDP divide the
  parameters too; offloaded parameters or optimizer states leave the device.
Gathered (ZeRO-3, FSDP)
- Two full decoder layers (the one computing and the one prefetched) and, in the loss phase, the full lm_head
  (TRL's fused head calls `full_tensor()` under FSDP2; ZeRO-3 gathers it).
Activations kept for backward, per token and layer (E, bytes; plus 4H + 8 for the final RMSNorm; transformers Llama/Qwen layers, PEFT LoRA,
bitsandbytes 4-bit, SDPA; read from what autograd saves, see tests/preflight/test_memory_model.py):
    E = 8H + 8                 two RMSNorms save their fp32 input and rsqrt
      + 2H                     input of q/k/v (MatMul4Bit saves it; one tensor for the three)
      + 2AD + 4KD              q and k after RoPE, v
      + 2AD + 4A               SDPA output and fp32 logsumexp (flash / memory-efficient kernels; no S×S scores)
      + 4(A−K)D (varlen, torch < 2.12)  torch's varlen_attn has no GQA there: K and V repeated to A heads are what
                               the kernel keeps (Setup.attention "varlen_repeat_kv")
      + 2AD (CUDA; row-by-row) the output transposed to (B, S, A·D) by `.contiguous()` for o_proj; medsft's row-by-row
                               SDPA joins its sequences' outputs into one copy on any device. The flash kernels
                               (flash-attn, torch's varlen) write (B, S, A, D) directly: no copy
      + 2H + 8I                MLP input; gate output (SiLU's input), SiLU output, up output, their product
      + 2r·n_t                 LoRA A outputs (bf16)
      + 4AD + 4KD + 4A + 4K    Qwen3's q/k RMSNorms (fp32 inputs)
      + Σ_targets in·(b_l + 1) LoRA dropout's output and mask (dropout > 0); fp32 adapters add in·4 per target for
                               the input cast to the adapter dtype
      + A·S·(b + 4)            eager attention only: scores and fp32 softmax
  With checkpointing (non-reentrant) a layer keeps only its input (2H); one layer is recomputed at a time. With
  TRL's `activation_offloading` the kept tensors wait in CPU memory: two layers' worth stay on the device (the
  layer in its backward and the one prefetched).
  Dense masks (per batch, not per token), only where one is really built: transformers' own SDPA over a
  padding-free batch builds a (ΣT)² bool mask once per forward (1 B/element, masking_utils) and SDPA turns it
  into an additive mask in the query dtype on every call (b B/element, `aten::where`), which SDPA's backward
  keeps: L of them without checkpointing, one with; eager builds one additive mask (b B/element). medsft's
  attentions build none for a padding-free batch (medsft/model/attention.py: varlen, flash, row-by-row SDPA).
Backward working set of one layer, per token: B = 2H + 4I (the incoming gradient, and at the MLP's peak the
gradients of its gate and up outputs; the product's gradient is consumed as they are made), plus
bitsandbytes' dequantized weight of the largest linear (out·in·b, one at a time).
Loss (TRL's fused LM head, trl/kernels/chunked_logprob.py): a tile of min(N_c, 4096) × min(V, 32768) in the
compute dtype, the scored hidden states (N_c·H·b, saved), fp32 gradient of them (N_c·H·4) and its cast
(N_c·H·b), twelve fp32 per-token vectors, and the gradient scattered back to all T positions (T·H·b).
Transformers' own loss (for comparisons): T·V·h B at its peak, h read from each version's code: 12 for ≥ 4.49
(bf16 logits, fp32 log-softmax output, its fp32 gradient, the bf16 cast), 16 for 4.46–4.48 (ForCausalLMLoss also
made a contiguous fp32 copy of the shifted logits), 18 for ≤ 4.45 (Llama's forward upcast the logits it returned).
Evaluation: no grad; one layer's transient (2H + 6I per token) for eval-batch × max_length tokens, and the
head's tile and per-token vectors.
Runtime overhead (not "allocated"): CUDA context ~0.5 GiB and 10% allocator fragmentation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

GiB = 1024**3
TOKEN_TILE, VOCAB_TILE = 4096, 32768  # trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE, trainer/utils.py chunk size
CONTEXT_BYTES = 0.5 * GiB
FRAGMENTATION = 0.10
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
# write o_proj's layout directly, build no mask
FLASH = ("flash_attention_2", "flash_attention_4", "varlen", "varlen_repeat_kv")
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Arch:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qk_norm: bool = False

    @classmethod
    def from_config(cls, cfg: dict) -> Arch:
        cfg = cfg.get("text_config", cfg)
        h, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        return cls(hidden=h, intermediate=int(cfg["intermediate_size"]), layers=int(cfg["num_hidden_layers"]),
                   heads=heads, kv_heads=int(cfg.get("num_key_value_heads") or heads),
                   head_dim=int(cfg.get("head_dim") or h // heads), vocab=int(cfg["vocab_size"]),
                   tied=bool(cfg.get("tie_word_embeddings", False)),
                   qk_norm=str(cfg.get("model_type", "")).startswith("qwen3"))

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder block."""
        h, a, k, d, i = self.hidden, self.heads, self.kv_heads, self.head_dim, self.intermediate
        return {"q_proj": (h, a * d), "k_proj": (h, k * d), "v_proj": (h, k * d), "o_proj": (a * d, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_params(self) -> int:
        return self.layers * sum(i * o for i, o in self.linear_shapes().values())


@dataclass(frozen=True)
class Setup:
    """Everything the estimate depends on besides the architecture."""

    bits: int | None = 4
    double_quant: bool = True
    dtype: str = "bfloat16"
    rank: int = 16
    targets: str | Sequence[str] = "all-linear"
    dropout: float = 0.0
    lora_bytes: int | None = None  # None: bf16 for a quantized model (TRL), fp32 otherwise
    micro_batch: int = 1
    eval_batch: int = 1
    max_length: int = 2048
    trained_share: float = 1.0  # tokens with labels: the fused head scores only those
    checkpointing: bool = True
    # flash_attention_2 | flash_attention_4 | varlen | varlen_repeat_kv (torch < 2.12) | sdpa_rows (medsft's SDPA, medsft/model/attention.py) | sdpa
    # (transformers' own: a dense mask for padding-free batches) | flex_attention | eager
    attention: str = "sdpa"
    padding_free: bool = False  # sequences flattened into one row (TRL's padding-free collator or packing)
    device: str = "cuda"  # cuda | cpu (the CPU SDPA output needs no transposing copy)
    head: str = "chunked"  # chunked (TRL's fused head) | full (transformers' logits + cross-entropy)
    head_bytes: int = 12  # full head: bytes per token × vocabulary entry at its peak (depends on the version)
    upcast_non_quantized: bool = False  # a kbit preparation casting norms/embeddings/lm_head to fp32
    world_size: int = 1
    shard_params: bool = False  # ZeRO-3 or FSDP
    zero_stage: int | None = None
    fsdp: bool = False
    offload_optimizer: bool = False
    offload_params: bool = False
    offload_activations: bool = False  # TRL's activation_offloading: saved activations wait in CPU memory
    optimizer: str = "adamw"  # adamw (torch, states in the parameter dtype) | deepspeed (fp32 master + moments)

    def targeted(self, arch: Arch) -> list[str]:
        if self.targets == "all-linear":
            return list(LINEARS)
        return [n for n in LINEARS if any(str(t).split(".")[-1] == n for t in self.targets)]

    def replace(self, **changes: Any) -> Setup:
        return dataclasses.replace(self, **changes)


@dataclass
class Estimate:
    persistent: list[tuple[str, float, str]] = field(default_factory=list)  # (term, bytes, how)
    phases: dict[str, list[tuple[str, float, str]]] = field(default_factory=dict)  # phase -> its terms

    def add(self, name: str, nbytes: float, how: str) -> None:
        self.persistent.append((name, float(nbytes), how))

    def get(self, name: str) -> float:
        for n, b, _ in self.persistent:
            if n == name:
                return b
        for terms in self.phases.values():
            for n, b, _ in terms:
                if n == name:
                    return b
        raise KeyError(name)

    def phase_bytes(self, phase: str) -> float:
        return sum(b for _, b, _ in self.phases[phase])

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phase_bytes)

    @property
    def allocated(self) -> float:
        """Comparable with torch.cuda.max_memory_allocated."""
        return sum(b for _, b, _ in self.persistent) + self.phase_bytes(self.peak_phase)

    @property
    def overhead(self) -> float:
        return CONTEXT_BYTES + FRAGMENTATION * self.allocated

    @property
    def total(self) -> float:
        return self.allocated + self.overhead

    def dominant(self) -> tuple[str, float]:
        """The largest single term of the peak."""
        terms = [*self.persistent, *self.phases[self.peak_phase]]
        name, nbytes, _ = max(terms, key=lambda t: t[1])
        return name, nbytes


def layer_activation_bytes(arch: Arch, s: Setup) -> float:
    """E: bytes per token one layer keeps for its backward (the module docstring's derivation)."""
    h, a, k, d, i = arch.hidden, arch.heads, arch.kv_heads, arch.head_dim, arch.intermediate
    b, lb = DTYPE_BYTES[s.dtype], lora_bytes(s)
    shapes, targets = arch.linear_shapes(), s.targeted(arch)
    fp32 = 8 * h + 8 + 4 * a + ((4 * a * d + 4 * k * d + 4 * a + 4 * k) if arch.qk_norm else 0)
    elements = 2 * h + 2 * a * d + 2 * k * d + 4 * i  # attention and MLP inputs, q, k, v, SDPA out, MLP four
    if s.attention not in FLASH and (s.device == "cuda" or (s.attention == "sdpa_rows" and s.padding_free)):
        elements += a * d  # o_proj's input, made contiguous from SDPA's (B, A, S, D) output (or joined from rows)
    if s.attention == "varlen_repeat_kv":
        elements += 2 * (a - k) * d  # K and V repeated to the query heads: the kernel keeps those, not the K heads
    lora = s.rank * len(targets) * lb
    if lb != b:  # PEFT casts each adapter's input to the adapter dtype and keeps the copy
        lora += sum(shapes[t][0] * lb for t in targets)
    if s.dropout > 0:  # dropout's output (adapter dtype) and its bool mask
        lora += sum(shapes[t][0] * (lb + 1) for t in targets)
    eager = a * s.max_length * (b + 4) if s.attention == "eager" else 0
    return fp32 + elements * b + lora + eager


def lora_bytes(s: Setup) -> int:
    return s.lora_bytes or (2 if s.bits else 4)


def estimate(arch: Arch, s: Setup) -> Estimate:
    est = Estimate()
    b, lb = DTYPE_BYTES[s.dtype], lora_bytes(s)
    n = s.world_size if s.shard_params else 1
    kept = 0 if s.offload_params else 1
    away = " → offloaded to CPU" if s.offload_params else ""
    shard = f" / {n} shards" if n > 1 else ""
    p_lin = arch.linear_params()

    if s.bits == 4:
        c = (1 / 64 + 4 / (64 * 256)) if s.double_quant else 4 / 64
        per_weight, how = 0.5 + c, f"{p_lin / 1e9:.2f}B weights × (0.5 + {c:.4f}) B (NF4 + absmax)"
    elif s.bits == 8:
        per_weight = 1 + 4 * arch.layers * sum(o for _, o in arch.linear_shapes().values()) / p_lin
        how = f"{p_lin / 1e9:.2f}B weights × 1 B + fp32 row scales"
    else:
        per_weight, how = b, f"{p_lin / 1e9:.2f}B weights × {b} B"
    est.add("base weights" + (" (quantized)" if s.bits else ""), kept * p_lin * per_weight / n, how + shard + away)
    ub = 4 if s.upcast_non_quantized else b
    unq = arch.vocab * arch.hidden * (1 if arch.tied else 2) + (2 * arch.layers + 1) * arch.hidden
    est.add("embeddings, lm_head, norms", kept * unq * ub / n,
            f"V·H{'' if arch.tied else ' × 2 (untied)'} + norms, {ub} B" + shard + away)
    shapes, targets = arch.linear_shapes(), s.targeted(arch)
    lora = arch.layers * sum(s.rank * (shapes[t][0] + shapes[t][1]) for t in targets)
    est.add("LoRA parameters", kept * lora * lb / n, f"{lora / 1e6:.1f}M × {lb} B" + shard + away)
    grad_shards = s.world_size if (s.zero_stage or 0) >= 2 or s.shard_params else 1
    est.add("LoRA gradients", lora * lb / grad_shards, f"{lb} B/param" + (f" / {grad_shards}" if grad_shards > 1 else ""))
    if s.optimizer == "deepspeed":
        opt, how = lora * 12 / s.world_size, f"fp32 master + 2 moments = 12 B/param / {s.world_size} (ZeRO)"
    else:
        opt_shards = s.world_size if s.shard_params else 1
        opt, how = lora * 2 * lb / opt_shards, f"AdamW: 2 moments × {lb} B/param" + (
            f" / {opt_shards}" if opt_shards > 1 else "")
    offloaded = s.offload_optimizer or (s.fsdp and s.offload_params)
    est.add("optimizer states", 0 if offloaded else opt, "offloaded to CPU" if offloaded else how)
    if s.shard_params:
        layer = (p_lin / arch.layers * per_weight + 2 * arch.hidden * b
                 + lora / arch.layers * lb)
        est.add("gathered layers", 2 * layer, "2 full decoder layers (computing + prefetched)")

    t = s.micro_batch * s.max_length
    nc = max(1, int(t * s.trained_share))
    e = layer_activation_bytes(arch, s)
    h, i = arch.hidden, arch.intermediate
    back = (2 * h + 4 * i) * b / 2
    deq = max(o * inp for inp, o in shapes.values()) * b if s.bits else 0
    final_norm = 4 * h + 8  # the last RMSNorm's fp32 input
    # TRL's activation offloading moves each saved tensor to the CPU as the forward goes and brings a layer's back
    # for its backward, prefetching the next: two layers' worth stay on the device
    layers_kept, many = (min(2, arch.layers), "2 (offloaded: in use + prefetched)") if s.offload_activations else (
        arch.layers, "L")
    kept_act = (layers_kept * (h * b if s.checkpointing else e) + final_norm) * t
    mask = dense_mask_terms(arch, s, t, b)
    kept_how = (f"{t:,} tokens × ({many} × 2H (each layer's input) + 4H final norm)" if s.checkpointing
                else f"{t:,} tokens × ({many} × E ({e / 1024:.0f} KiB/token/layer) + 4H final norm)")
    one_layer = ("one layer recomputed", e * t, f"{t:,} tokens × E ({e / 1024:.0f} KiB)")
    est.phases["forward"] = [("kept activations", kept_act, kept_how)] + ([one_layer] if s.checkpointing else []) + mask
    est.phases["layer backward"] = [("kept activations", kept_act, kept_how)] + (
        [one_layer] if s.checkpointing else []) + mask + [
        ("backward working set", back * t, f"{t:,} tokens × (2H + 4I) × {b} B / 2"),
        ("dequantized weight", deq, "largest linear, out·in × b (bitsandbytes)")]
    est.phases["loss"] = [("kept activations", kept_act, kept_how), *mask, *head_terms(arch, s, t, nc, b, grad=True)]
    te = s.eval_batch * s.max_length
    est.phases["evaluation"] = [("one layer, no grad", (2 * h + 6 * i) * b / 2 * te, f"{te:,} tokens × (2H + 6I)"),
                                *head_terms(arch, s, te, max(1, int(te * s.trained_share)), b, grad=False)]
    est.phases["optimizer step"] = [("AdamW temporaries", 0 if offloaded else lora * lb * 2 / (n if s.shard_params else 1),
                                     "foreach update buffers ≈ 2 × parameters")]
    return est


def dense_mask_terms(arch: Arch, s: Setup, t: int, b: int) -> list[tuple[str, float, str]]:
    """The (ΣT)² masks a padding-free batch costs where one is built (the module docstring's rule)."""
    if not s.padding_free or s.attention not in ("sdpa", "eager"):
        return []
    if s.attention == "eager":
        return [("dense attention mask", t * t * b, f"({t:,})² additive mask × {b} B (eager)")]
    kept = 1 if s.checkpointing else arch.layers
    return [("dense attention mask", t * t * (1 + kept * b),
             f"({t:,})² bool mask + {kept} additive mask{'s' if kept > 1 else ''} × {b} B kept by SDPA's backward")]


def head_terms(arch: Arch, s: Setup, t: int, nc: int, b: int, grad: bool) -> list[tuple[str, float, str]]:
    """The loss phase's buffers (TRL's chunked head, or transformers' full logits for comparisons)."""
    h, v = arch.hidden, arch.vocab
    terms: list[tuple[str, float, str]] = []
    if s.shard_params:
        terms.append(("gathered lm_head", v * h * b, "V·H full (FSDP2 full_tensor / ZeRO-3 gather)"))
    if s.head == "full":
        per = s.head_bytes if grad else b + 4
        terms.append(("logits and loss", t * v * per, f"{t:,} tokens × V × {per} B (logits, fp32 log-softmax"
                      f"{', gradients' if grad else ''})"))
        return terms
    tile = min(nc, TOKEN_TILE) * min(v, VOCAB_TILE) * b
    terms.append(("head tile", tile, f"min(N_c, {TOKEN_TILE}) × min(V, {VOCAB_TILE}) × {b} B"))
    per_token = nc * 12 * 4 + nc * h * b
    if grad:
        per_token += nc * h * (4 + b) + t * h * b
    terms.append(("head per-token buffers", per_token, f"N_c={nc:,}: hidden copy{', fp32 gradient + cast, scatter' if grad else ''}"
                  ", 12 fp32 vectors"))
    return terms
