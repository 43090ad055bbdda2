"""Padding-free batches (TRL's collator: one flat row, position_ids restarting at each sequence) are correct
with every attention implementation medsft may pick on a GPU: the logits of a packed batch equal those of
the sequences run one by one, and differ clearly from a batch whose sequences see each other. Then the
fallback's speed: transformers' SDPA (its packed mask is dense over the flattened batch, T×T) against flex_attention
(block-sparse, torch-native, no extra package), forward + backward, timings written to
gpu-attention-<date>.json under $MEDSFT_BENCH_RESULTS or bench/results. Which becomes the default is a
human's choice from those numbers: only correctness is asserted here, never a timing. medsft's own
attentions (medsft/model/attention.py: torch's varlen kernel, row-by-row SDPA) are timed against transformers'
SDPA and flex_attention on one decoder layer at 8 × 4096 and 1 × 32768 tokens (gpu-attention-varlen-*.json)."""

from __future__ import annotations

import importlib.util
import statistics
import time

import pytest

from tests.gpu.conftest import bench_common, cpu_only_skip, free_cuda, load_base_path

pytestmark = pytest.mark.gpu
# every attention medsft/model/attention.py may pick, and transformers' own SDPA (the dense-mask baseline)
IMPLEMENTATIONS = ["flash_attention_2", "flash_attention_4", "medsft_varlen", "medsft_sdpa_rows", "sdpa",
                   "flex_attention", "eager"]
LENGTHS = [37, 120, 64, 200, 5, 300]  # uneven, one very short


def collate(sequences):
    """Exactly what SFTTrainer's padding-free collator gives the model (labels aside)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([{"input_ids": s} for s in sequences])
    batch.pop("labels")
    return batch


def sequences(lengths, seed=0, vocab=1400):
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, vocab, (n,), generator=g).tolist() for n in lengths]  # ids of the built-in tokenizer


def skip_unusable(attn: str, target) -> None:
    if attn in ("medsft_varlen", "flash_attention_4"):
        cpu_only_skip(target, f"{attn} runs on CUDA only")
        import torch

        from medsft.model.attention import flash_attn_4_imports, torch_at_least

        if torch.cuda.get_device_capability()[0] < (9 if attn == "flash_attention_4" else 8):
            pytest.skip(f"{attn} needs a newer GPU")
        if attn == "medsft_varlen" and not torch_at_least(torch.__version__, (2, 10)):
            pytest.skip(f"torch {torch.__version__} has no varlen kernel")
        if attn == "flash_attention_4" and not flash_attn_4_imports():
            pytest.skip("flash_attn.cute (flash-attn-4) does not import")
    if attn == "flash_attention_2":
        cpu_only_skip(target, "flash_attention_2 runs on CUDA only")
        import torch

        try:
            import flash_attn  # noqa: F401
        except Exception as err:
            pytest.skip(f"flash-attn does not import ({type(err).__name__}): medsft falls back to sdpa")
        if torch.cuda.get_device_capability()[0] < 8:
            pytest.skip("flash_attention_2 needs an Ampere or newer GPU")


def load(target, attn: str):
    import torch
    from transformers import AutoModelForCausalLM

    from medsft.model.attention import register

    register()

    return AutoModelForCausalLM.from_pretrained(load_base_path(target), dtype=getattr(torch, target.dtype),
                                                attn_implementation=attn, use_cache=False,
                                                device_map={"": 0} if target.cuda else None)


@pytest.mark.parametrize("attn", IMPLEMENTATIONS)
def test_packed_batch_equals_separate_sequences(target, attn):
    import torch

    skip_unusable(attn, target)
    model = load(target, attn).eval()
    device = next(model.parameters()).device
    seqs = sequences(LENGTHS)
    batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in collate(seqs).items()}
    with torch.no_grad():
        packed = model(**batch, use_cache=False).logits[0].float()
        alone = torch.cat([model(input_ids=torch.tensor([s], device=device), use_cache=False).logits[0].float()
                           for s in seqs])
        # the control: the same tokens as one sequence (each attends to the earlier sequences). An all-ones
        # attention_mask is no control: flash_attention_2 drops it and reads the packing from position_ids.
        joined = torch.arange(batch["input_ids"].shape[1], device=device)[None]
        leaked = model(input_ids=batch["input_ids"], position_ids=joined, use_cache=False).logits[0].float()
    diff, leak, scale = ((packed - alone).abs().max().item(), (leaked - alone).abs().max().item(),
                         alone.abs().max().item())
    tolerance = target.tolerance(1e-4, 0.05) * scale  # fp32: rounding; bf16: measured 0.042 of 3.3 on a CPU
    print(f"{attn}: packed vs one by one max |diff| {diff:.3g} (tolerance {tolerance:.3g}); joined into one "
          f"sequence {leak:.3g}; logits up to {scale:.3g}")
    assert diff <= tolerance, f"{attn}: a packed batch's logits differ from the separate sequences' by {diff}"
    assert leak > 10 * diff, f"{attn}: the check cannot tell a packed mask from none ({leak} vs {diff})"
    del model
    free_cuda()


def time_forward_backward(model, batch, reps: int) -> tuple[float, list[float]]:
    """(seconds of the first call, seconds of each of `reps` calls after one more warm-up): forward and
    backward through the decoder (the frozen weights' activation gradients, as in QLoRA), no lm_head. On a
    CPU forward only: FlexAttention has no CPU backward (torch raises NotImplementedError)."""
    import torch

    cuda = batch["input_ids"].is_cuda

    def once():
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(cuda)
        rest = {k: v for k, v in batch.items() if k != "input_ids"}
        with torch.set_grad_enabled(cuda):
            hidden = model.model(inputs_embeds=embeds, use_cache=False, **rest).last_hidden_state
            if cuda:
                hidden.float().pow(2).mean().backward()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    first = once()
    once()
    return first, [once() for _ in range(reps)]


def test_packed_attention_timings_sdpa_vs_flex(target):
    import torch

    common = bench_common()
    if target.cuda:
        totals, row, reps = [4096, 16384], 512, 5  # packed tokens per batch; rows of ~512 tokens (128-896)
    else:
        totals, row, reps = [256, 512], 64, 2
    implementations = ["sdpa", "flex_attention"]
    if target.cuda and importlib.util.find_spec("flash_attn") is not None:
        implementations.append("flash_attention_2")  # the reference where it imports
    rows = []
    for attn in implementations:
        try:
            skip_unusable(attn, target)
        except pytest.skip.Exception as why:
            rows.append({"attention": attn, "skipped": str(why)})
            continue
        model = load(target, attn)
        model.requires_grad_(False)
        model.train()
        device = next(model.parameters()).device
        for total in totals:
            g = torch.Generator().manual_seed(total)
            lengths, left = [], total
            while left > 0:
                n = min(left, int(torch.randint(row // 4, row * 7 // 4, (1,), generator=g)))
                lengths.append(n)
                left -= n
            batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in collate(sequences(lengths, total)).items()}
            if target.cuda:
                torch.cuda.reset_peak_memory_stats()
            first, times = time_forward_backward(model, batch, reps)
            # training sees a new packed length at nearly every step: flex_attention recompiles for new shapes
            varying = []
            for k in range(1, 4):
                other = {k2: v.to(device) if hasattr(v, "to") else v
                         for k2, v in collate(sequences(lengths[:-1] + [max(1, lengths[-1] - 13 * k)], k)).items()}
                varying.append(time_forward_backward(model, other, 0)[0])
            record = {"attention": attn, "packed_tokens": total, "sequences": len(lengths),
                      "mean_sequence": total / len(lengths), "first_call_seconds": first,
                      "median_seconds": statistics.median(times), "seconds": times,
                      "new_length_seconds": varying,
                      "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if target.cuda else None}
            rows.append(record)
            what = "fwd+bwd" if target.cuda else "fwd"
            print(f"{attn:>18} T={total:>6}: {record['median_seconds'] * 1e3:8.1f} ms {what} (first call "
                  f"{first:.1f} s, new lengths {', '.join(f'{v * 1e3:.0f}' for v in varying)} ms)"
                  + (f", peak {record['peak_memory_gib']:.1f} GiB" if target.cuda else ""))
            assert all(t > 0 for t in times)  # recorded, never compared
        del model
        free_cuda()
    faster = {}
    for total in totals:
        timed = {r["attention"]: r["median_seconds"] for r in rows if r.get("packed_tokens") == total}
        if {"sdpa", "flex_attention"} <= timed.keys():
            faster[str(total)] = {"faster": min(("sdpa", "flex_attention"), key=timed.get),
                                  "sdpa_over_flex": timed["sdpa"] / timed["flex_attention"]}
    name = "gpu-attention" if target.cuda else "gpu-attention-cpu-check"
    path = common.save(name, {"model": target.label, "dtype": target.dtype, "gpu": common.gpu_environment(),
                       "what": "forward+backward of the decoder on one padding-free packed batch (TRL's collator), "
                               "frozen weights; median of the timed calls after two warm-ups",
                       "rows": rows, "sdpa_vs_flex": faster})
    print(f"sdpa vs flex_attention: {faster}; written to {path}")
    assert path.is_file()


def one_layer_model(target, attn: str):
    """One decoder layer of the target's architecture (Qwen3-0.6B's 16 heads × 128, 8 KV heads on a GPU),
    random weights: the attention's cost without 28 layers of activations (a dense 32k² mask per layer)."""
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from medsft.model.attention import register

    register()
    cfg = json.loads((__import__("pathlib").Path(load_base_path(target)) / "config.json").read_text())
    cfg.update(num_hidden_layers=1, layer_types=None)
    config = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")
                                     and v is not None})
    config._attn_implementation = attn
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, target.dtype))
    return model.to("cuda" if target.cuda else "cpu").requires_grad_(False).train()


def test_attention_timings_varlen_vs_sdpa_vs_flex(target):
    """Forward + backward of one decoder layer on padding-free batches of 8 × 4096 and 1 × 32768 tokens
    (CPU logic check: 8 × 64 and 1 × 512, forward only), written to JSON: medsft's varlen against
    transformers' SDPA (dense (ΣT)² mask), medsft's row-by-row SDPA and flex_attention. Recorded, never
    compared."""
    import torch

    common = bench_common()
    shapes = [(8, 4096), (1, 32768)] if target.cuda else [(8, 64), (1, 512)]
    reps = 5 if target.cuda else 1
    rows = []
    for attn in ["medsft_varlen", "sdpa", "medsft_sdpa_rows", "flex_attention", "flash_attention_2"]:
        try:
            skip_unusable(attn, target)
            if attn == "flex_attention":
                cpu_only_skip(target, "flex_attention has no CPU backward")
        except pytest.skip.Exception as why:
            rows.append({"attention": attn, "skipped": str(why)})
            continue
        model = one_layer_model(target, attn)
        device = next(model.parameters()).device
        for sequences_, length in shapes:
            batch = {k: v.to(device) if hasattr(v, "to") else v
                     for k, v in collate(sequences([length] * sequences_, length)).items()}
            if target.cuda:
                torch.cuda.reset_peak_memory_stats()
            try:
                first, times = time_forward_backward(model, batch, reps)
            except torch.OutOfMemoryError as err:
                rows.append({"attention": attn, "sequences": sequences_, "length": length,
                             "failed": f"out of memory: {str(err)[:160]}"})
                free_cuda()
                continue
            record = {"attention": attn, "sequences": sequences_, "length": length,
                      "packed_tokens": sequences_ * length, "first_call_seconds": first,
                      "median_seconds": statistics.median(times), "seconds": times,
                      "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if target.cuda else None}
            rows.append(record)
            print(f"{attn:>18} {sequences_} x {length}: {record['median_seconds'] * 1e3:8.1f} ms"
                  + (f", peak {record['peak_memory_gib']:.1f} GiB" if target.cuda else ""))
        del model
        free_cuda()
    ratios = {}
    for sequences_, length in shapes:
        timed = {r["attention"]: r["median_seconds"] for r in rows
                 if r.get("length") == length and r.get("sequences") == sequences_ and "median_seconds" in r}
        if "medsft_varlen" in timed:
            ratios[f"{sequences_}x{length}"] = {f"{k}_over_varlen": v / timed["medsft_varlen"]
                                                 for k, v in timed.items() if k != "medsft_varlen"}
    name = "gpu-attention-varlen" if target.cuda else "gpu-attention-varlen-cpu-check"
    path = common.save(name, {"model": f"{target.label}, 1 decoder layer", "dtype": target.dtype,
                              "gpu": common.gpu_environment(),
                              "what": "forward+backward (CPU: forward) of one decoder layer on a padding-free batch "
                                      "(TRL's collator), frozen weights; median of the timed calls after two warm-ups",
                              "rows": rows, "slower_than_varlen": ratios})
    print(f"times relative to varlen: {ratios}; written to {path}")
    assert path.is_file()
