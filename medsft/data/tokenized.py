"""Prompt/completion rows and conversations → `input_ids` + `labels`, batched, by TRL's tokenization rules.

Why not TRL's `SFTTrainer._prepare_dataset` itself: it formats and tokenizes one row at a time and lets
`datasets` fingerprint (hash) the 151k-entry tokenizer for every `map`, so preparing medical-o1 took longer
than training a few hundred steps. medsft applies the same rules to a batch at once (the fast tokenizer's
batch call through `apply_chat_template`, exactly the call TRL makes per row), gives `datasets` its
fingerprints, and runs once for every split. The cores: the fast tokenizer's batch call encodes on every core
already (Rust threads); a process pool (`training.dataset_num_proc`) adds only the template rendering, and
measured no faster on 2 cores (bench/data_stage.py), so it is used only when the recipe asks. The rules are TRL's (tests/data compares the tokens with TRL's
own preparation on real templates):
- prompt/completion: the prompt rendered with the generation prompt, prompt + completion rendered whole; the
  completion starts where the two token lists diverge (`trl.data_utils.common_prefix_length`); with
  `completion_only_loss` every prompt token is -100.
- conversations (`messages`): TRL's `assistant_only_loss` — labels on every assistant turn and its end-of-turn
  token, -100 elsewhere, through a template with `{% generation %}` markers (medsft/model/chat_templates.py).
Over-long rows are dropped rather than truncated: a truncated reasoning trace loses its answer and end-of-turn
token, and would teach the model never to stop (axolotl drops them too). Dropped rows are counted.
"""

from __future__ import annotations

import os
import statistics
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from medsft.errors import MedsftError

if TYPE_CHECKING:
    from datasets import Dataset

BATCH_ROWS = 256


@dataclass(frozen=True)
class Tokenization:
    """What the tokens depend on besides the rows and the tokenizer, and how many processes make them."""

    completion_only_loss: bool = True
    max_length: int | None = 2048  # the length statistics count the rows over it
    drop_longer_than: int | None = 2048  # training rows longer than this are dropped (None: keep all)
    num_proc: int | None = None  # training.dataset_num_proc: a process pool of that many (None: one process)

    def key(self) -> dict[str, Any]:
        return {"completion_only_loss": self.completion_only_loss, "drop_longer_than": self.drop_longer_than}


def tokenize(ds: Dataset, tokenizer: Any, tokenization: Tokenization = Tokenization(), *, name: str = "data"
             ) -> Dataset:
    """`row_id`, `input_ids`, `labels` for every row of `ds` (prompt/completion rows, conversations, or both),
    in order."""
    from datasets import Features, List, Value
    from jinja2 import TemplateError

    training_template = None
    if "messages" in ds.column_names:  # conversations: the template variant with {% generation %} markers
        from medsft.model.chat_templates import training_template as with_markers

        training_template = with_markers(tokenizer)
    if len(ds) == 0:
        return ds.select_columns(["row_id"]).add_column("input_ids", []).add_column("labels", [])
    features = Features({"row_id": Value("int64"), "input_ids": List(Value("int32")), "labels": List(Value("int32"))})
    try:
        return ds.map(tokenize_batch, batched=True, batch_size=BATCH_ROWS, features=features,
                      remove_columns=[c for c in ds.column_names if c != "row_id"],
                      fn_kwargs={"tokenizer": tokenizer, "completion_only_loss": tokenization.completion_only_loss,
                                 "template": training_template},
                      num_proc=tokenization.num_proc if (tokenization.num_proc or 1) > 1 else None,
                      new_fingerprint=uuid.uuid4().hex,
                      desc=f"Tokenizing {name}")
    except TemplateError:  # the template's own raise_exception ("Conversation roles must alternate", ...)
        raise refused_rows(ds, tokenizer, training_template, name) from None
    except NoTrainedToken as err:
        raise MedsftError(f"{name} row {err.row_id} has no trained token (the chat template marks no assistant turn)",
                          "check that the chat template marks assistant turns with {% generation %}",
                          "model.chat_template") from None


class NoTrainedToken(Exception):
    def __init__(self, row_id: int) -> None:
        super().__init__(row_id)
        self.row_id = row_id


def tokenize_batch(batch: dict[str, list], tokenizer: Any, completion_only_loss: bool,
                   template: str | None) -> dict[str, list]:
    """One batch: prompt/completion rows and conversations each tokenized by batched calls, put back in order."""
    from trl.data_utils import common_prefix_length

    n = len(batch["row_id"])
    conversations = batch.get("messages") or [None] * n
    ids: list[list[int]] = [[] for _ in range(n)]
    labels: list[list[int]] = [[] for _ in range(n)]
    single = [i for i in range(n) if not conversations[i]]
    for i, (prompt_ids, full) in zip(single, prompt_and_whole_ids(tokenizer, [batch["prompt"][i] for i in single],
                                                                  [batch["completion"][i] for i in single])):
        start = common_prefix_length(prompt_ids, full) if completion_only_loss else 0
        ids[i], labels[i] = full, [-100] * start + full[start:]
    multi = [i for i in range(n) if conversations[i]]
    if multi:
        out = tokenizer.apply_chat_template([conversations[i] for i in multi], tokenize=True, return_dict=True,
                                            chat_template=template, return_assistant_tokens_mask=True)
        for i, full, mask in zip(multi, out["input_ids"], out["assistant_masks"]):
            if 1 not in mask:
                raise NoTrainedToken(batch["row_id"][i])
            ids[i], labels[i] = full, [t if m else -100 for t, m in zip(full, mask)]
    return {"row_id": batch["row_id"], "input_ids": ids, "labels": labels}


def prompt_and_whole_ids(tokenizer: Any, prompts: list[list[dict]], completions: list[list[dict]]
                         ) -> list[tuple[list[int], list[int]]]:
    """(prompt tokens with the generation prompt, prompt + completion tokens) per row: TRL's two
    `apply_chat_template(..., tokenize=True)` calls, which render the template, then encode the text without
    special tokens. Rendering is Python and encoding is Rust that releases the GIL, so a chunk is encoded on a
    thread while the next one renders."""
    out: list[tuple[list[int], list[int]]] = []
    pending = []
    for start in range(0, len(prompts), RENDER_CHUNK):
        chunk_prompts = prompts[start:start + RENDER_CHUNK]
        texts = tokenizer.apply_chat_template(chunk_prompts, tokenize=False, add_generation_prompt=True)
        texts += tokenizer.apply_chat_template([p + c for p, c in zip(chunk_prompts, completions[start:start + RENDER_CHUNK])],
                                               tokenize=False)
        pending.append(encoder().submit(tokenizer, texts, add_special_tokens=False))
    for future in pending:
        encoded = future.result()["input_ids"]
        half = len(encoded) // 2
        out += zip(encoded[:half], encoded[half:])
    return out


RENDER_CHUNK = 64
_ENCODERS: dict[int, ThreadPoolExecutor] = {}


def encoder() -> ThreadPoolExecutor:
    """This process's encoding thread (a process forked by a `dataset_num_proc` pool starts its own: the parent's
    thread does not exist there)."""
    pid = os.getpid()
    if pid not in _ENCODERS:
        _ENCODERS[pid] = ThreadPoolExecutor(1, thread_name_prefix="medsft-encode")
    return _ENCODERS[pid]


def refused_rows(ds: Dataset, tokenizer: Any, template: str | None, name: str) -> MedsftError:
    """The rows a chat template refuses, found by rendering each (only once tokenizing has failed): how many, and
    the first by row id with the template's own message. An error, not a dropped row: the template is only
    known here, after the split and the weights, and a row it refuses is the data's or the template's
    mismatch for the user to settle (data.max_bad_fraction counts what the data alone shows)."""
    from jinja2 import TemplateError

    refused = []
    for row in ds:
        conversation = row.get("messages") or None
        messages = conversation if conversation else row["prompt"] + row["completion"]
        try:
            tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template if conversation else None)
        except TemplateError as err:
            refused.append((row["row_id"], " ".join(str(err).split())[:160]))
    if not refused:
        return MedsftError(f"the chat template failed while preparing the {name} rows", "check the template",
                           "model.chat_template")
    row_id, message = min(refused)
    return MedsftError(f"the chat template refuses {len(refused)} of {len(ds)} {name} rows (row {row_id}: {message})",
                       "fix those rows in the data (row ids count the data's rows from 0, sources in recipe "
                       "order), remove data.system_prompt if it is the system turn, or use a template that "
                       "accepts them", "model.chat_template")


def lengths(ds: Dataset) -> list[int]:
    """Tokens per row, read from the Arrow column's offsets (no row is decoded)."""
    import pyarrow.compute as pc

    if not len(ds):
        return []
    return pc.list_value_length(ds.select_columns(["input_ids"]).with_format("arrow")[:]["input_ids"]).to_pylist()


def drop_overlong(ds: Dataset, max_length: int | None, *, name: str) -> tuple[Dataset, int]:
    """Rows that fit in max_length, and how many did not."""
    if max_length is None or len(ds) == 0:
        return ds, 0
    lens = lengths(ds)
    keep = [i for i, n in enumerate(lens) if n <= max_length]
    if not keep:
        raise MedsftError(f"every {name} example is longer than training.max_length={max_length} "
                          f"(shortest is {min(lens)} tokens)", f"raise training.max_length to at least {min(lens)}")
    return (ds.select(keep) if len(keep) < len(ds) else ds), len(ds) - len(keep)


def length_stats(lens: list[int], max_length: int | None) -> dict[str, Any]:
    if not lens:
        return {"count": 0}
    ordered = sorted(lens)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"count": len(lens), "min": ordered[0], "median": statistics.median(ordered), "p95": p95,
            "max": ordered[-1], "over_max_length": sum(n > max_length for n in lens) if max_length else 0,
            "max_length": max_length}
