"""One rank of the FSDP2 sharding check on a CPU mesh (run by tests/launch/test_fsdp2.py under torchrun).

accelerate routes FSDP to CUDA devices only, so on a CPU machine this applies what accelerate's FSDP2 path
does itself: medsft's FSDP placement (quant storage = the model dtype, no device_map), PEFT LoRA, and
`fully_shard` per decoder layer then the root, on a 2-process gloo mesh. It trains, gathers the full
state dict, and rank 0 saves the adapter with PEFT; results go to OUT/rank<N>.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(out: Path, steps: int) -> None:
    import faulthandler
    faulthandler.dump_traceback_later(600, exit=True)  # a hung collective fails the test with a stack
    import torch
    import torch.distributed as dist
    from peft import get_peft_model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from medsft.data.cache import content_fingerprint, prepare
    from medsft.launch.detect import from_env
    from medsft.launch.placement import decide
    from medsft.model import load as model_mod
    from medsft.recipe.files import load_recipe
    from medsft.train.assembly import lora_config
    from medsft.train.runspec import resolve
    from medsft.upstream import keep_4bit_trainable_layout
    from tests.bnb_layout import packed_4bit_layers

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "tiny-cpu.yaml",
                         [f"output.dir={out}", "data.max_rows=200"])
    fsdp_on_gpus = from_env({**os.environ, "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}, cuda=True, num_gpus=world)
    placement = decide(fsdp_on_gpus, bits=recipe.quantization.bits, dtype=recipe.model.dtype)
    assert placement.name == "fsdp2" and placement.device_map is None
    base, _ = model_mod.load_model(recipe.model, recipe.quantization, placement, cuda=False)
    keep_4bit_trainable_layout(base)
    storage = {p.dtype for n, p in base.named_parameters() if "proj" in n and p.dim() == 2}
    model = get_peft_model(base, lora_config(recipe))
    mesh = init_device_mesh("cpu", (world,))
    layers = list(model.base_model.model.model.layers)
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sharded = all(type(p).__name__ == "DTensor" for layer in layers for p in layer.parameters())

    tokenizer = model_mod.load_tokenizer(recipe.model)
    spec = resolve(recipe, fsdp_on_gpus, kernels="off")
    prepared = prepare(recipe.data, tokenizer, spec.tokenization(), content_fingerprint(recipe.data)).prepared
    rows = prepared["train"].select(range(rank, len(prepared["train"]), world))  # this rank's shard
    collate = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-3)
    model.train()
    losses = []
    for step in range(steps):
        batch = collate([{k: rows[(step * 4 + i) % len(rows)][k] for k in ("input_ids", "labels")} for i in range(4)])
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world)

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    probe = torch.tensor([prepared["validation"][0]["input_ids"]])
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=probe).logits
    if rank == 0:
        model.save_pretrained(out / "adapter", state_dict=full)
        torch.save({"probe": probe, "logits": logits}, out / "probe.pt")
    record = {"rank": rank, "losses": losses, "sharded": sharded, "storage": sorted(str(d) for d in storage),
              "trainable": sorted({n.split(".")[-3] for n, p in model.named_parameters() if p.requires_grad}),
              "packed": packed_4bit_layers(model), "full_state_dict_keys": len(full)}
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
