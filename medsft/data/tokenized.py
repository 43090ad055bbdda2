"""Tokenize prompt/completion rows and build labels with TRL's own dataset preparation.

Why: `medsft data --json` must show `input_ids` and `labels` exactly as the trainer receives them, and
the trainer must not tokenize twice. So medsft runs TRL's preparation (medsft/upstream.py), once, and
hands the prepared dataset to `SFTTrainer`, which then skips its own. Over-long rows are dropped rather
than truncated: a truncated reasoning trace loses its answer and end-of-turn token, and would teach the
model never to stop (axolotl drops them too). Dropped rows are counted and reported.
Conversations (`messages`) are prepared with TRL's `assistant_only_loss`: labels on every assistant turn
and its end-of-turn token, -100 on every system/user token, through a template with `{% generation %}`
markers (medsft/model/chat_templates.py `training_template`). A mixture holding both kinds is prepared kind by
kind and put back in its order.
"""

from __future__ import annotations

import statistics

from medsft.errors import MedsftError
from medsft.upstream import prepare_dataset


def prepare_split(ds, tokenizer, *, name: str, num_proc: int | None = None, completion_only_loss: bool = True):
    """input_ids + labels (+ row_id) for one split, via TRL."""
    if len(ds) == 0:
        return ds
    columns = ds.column_names
    if "messages" not in columns:
        return prepare_kind(ds, tokenizer, "prompt", name=name, num_proc=num_proc,
                            completion_only_loss=completion_only_loss)
    if "prompt" not in columns:
        return prepare_kind(ds, tokenizer, "messages", name=name, num_proc=num_proc,
                            completion_only_loss=completion_only_loss)
    from datasets import concatenate_datasets

    is_conversation = [bool(m) for m in list(ds["messages"])]
    ds = ds.add_column("position", list(range(len(ds))))
    parts = []
    for kind, wanted in (("prompt", False), ("messages", True)):
        rows = [i for i, conv in enumerate(is_conversation) if conv == wanted]
        if rows:
            keep = ["row_id", "position", "messages"] if wanted else ["row_id", "position", "prompt", "completion"]
            parts.append(prepare_kind(ds.select(rows).select_columns(keep), tokenizer, kind, name=name,
                                      num_proc=num_proc, completion_only_loss=completion_only_loss,
                                      extra=("position",)))
    joined = concatenate_datasets(parts)
    positions = list(joined["position"])
    order = sorted(range(len(joined)), key=positions.__getitem__)
    return joined.select(order).remove_columns("position")


def prepare_kind(ds, tokenizer, kind: str, *, name: str, num_proc, completion_only_loss: bool, extra=()):
    """One kind of example through TRL: prompt/completion (completion-only loss) or messages (assistant-only)."""
    from jinja2 import TemplateError

    template = None
    try:
        if kind == "prompt":
            prepared = prepare_dataset(ds, tokenizer, name=name, num_proc=num_proc,
                                       completion_only_loss=completion_only_loss)
        else:
            from medsft.model.chat_templates import training_template

            template = training_template(tokenizer)
            prepared = prepare_dataset(ds, tokenizer, name=name, num_proc=num_proc,
                                       completion_only_loss=completion_only_loss, assistant_only_loss=True,
                                       chat_template=template)
    except TemplateError:  # the template's own raise_exception ("Conversation roles must alternate", ...)
        raise refused_rows(ds, tokenizer, kind, template, name) from None
    except RuntimeError as err:  # TRL: an example with no assistant token in the mask
        raise MedsftError(f"a {name} conversation has no trained token ({' '.join(str(err).split())[:120]})",
                          "check that the chat template marks assistant turns with {% generation %}",
                          "model.chat_template") from None
    return prepared.select_columns(["row_id", *extra, "input_ids", "labels"])


def refused_rows(ds, tokenizer, kind: str, template: str | None, name: str) -> MedsftError:
    """The rows a chat template refuses, found by rendering each (only once TRL has failed): how many, and the
    first by row id with the template's own message. An error, not a dropped row: the template is only
    known here, after the split and the weights, and a row it refuses is the data's or the template's
    mismatch for the user to settle (data.max_bad_fraction counts what the data alone shows)."""
    from jinja2 import TemplateError

    refused = []
    for row in ds:
        messages = row["messages"] if kind == "messages" else row["prompt"] + row["completion"]
        try:
            tokenizer.apply_chat_template(messages, tokenize=False, chat_template=template)
        except TemplateError as err:
            refused.append((row["row_id"], " ".join(str(err).split())[:160]))
    if not refused:
        return MedsftError(f"the chat template failed while preparing the {name} split", "check the template",
                           "model.chat_template")
    row_id, message = min(refused)
    return MedsftError(f"the chat template refuses {len(refused)} of {len(ds)} {name} rows (row {row_id}: {message})",
                       "fix those rows in the data (row ids count the data's rows from 0, sources in recipe "
                       "order), remove data.system_prompt if it is the system turn, or use a template that "
                       "accepts them", "model.chat_template")


def lengths(ds) -> list[int]:
    return [len(ids) for ids in ds["input_ids"]] if len(ds) else []


def drop_overlong(ds, max_length: int | None, *, name: str):
    """Rows that fit in max_length, and how many did not."""
    if max_length is None or len(ds) == 0:
        return ds, 0
    lens = lengths(ds)
    keep = [i for i, n in enumerate(lens) if n <= max_length]
    if not keep:
        raise MedsftError(f"every {name} example is longer than training.max_length={max_length} "
                          f"(shortest is {min(lens)} tokens)", f"raise training.max_length to at least {min(lens)}")
    return (ds.select(keep) if len(keep) < len(ds) else ds), len(ds) - len(keep)


def length_stats(lens: list[int], max_length: int | None) -> dict:
    if not lens:
        return {"count": 0}
    ordered = sorted(lens)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"count": len(lens), "min": ordered[0], "median": statistics.median(ordered), "p95": p95,
            "max": ordered[-1], "over_max_length": sum(n > max_length for n in lens) if max_length else 0,
            "max_length": max_length}


def prepare_all(splits, tokenizer, spec):
    """All splits prepared; returns (DatasetDict, {split: stats before dropping}, {split: n dropped})."""
    from datasets import DatasetDict

    t = spec.recipe.training
    out, stats, dropped = {}, {}, {}
    for name, ds in splits.items():
        prepared = prepare_split(ds, tokenizer, name=name, num_proc=t.get("dataset_num_proc"),
                                 completion_only_loss=spec.cache_inputs()["completion_only_loss"])
        stats[name] = length_stats(lengths(prepared), t.get("max_length"))
        if name != "test":  # the test split is kept whole for evaluation, which uses the raw rows
            prepared, dropped[name] = drop_overlong(prepared, spec.drop_longer_than, name=name)
        out[name] = prepared
    return DatasetDict(out), stats, dropped
