"""Data, mixtures, conversation formats and chat templates (issue 21): a mixture says what it became and
refuses to become something else silently; upsampling is bounded; settings that would be ignored are
refused; a template's refusals and its missing stop token are one line; conversations of both shapes and
templates without system turns train."""

from __future__ import annotations

import json

import pytest
import yaml

from medsft.recipe.data_section import DataSection
from tests.cases import recipe_file, recipe_with, run_case
from tests.conftest import REPO, run_cli, run_cli_here

CHATML_TRAINING = (REPO / "medsft" / "model" / "templates" / "chatml_training.jinja").read_text()
LOOP = "{%- for message in messages %}"
# ChatML with {% generation %} markers that, like Gemma's and Mistral's, refuses some conversations
NO_SYSTEM = CHATML_TRAINING.replace(LOOP, LOOP + "{%- if message['role'] == 'system' %}"
                                    "{{ raise_exception('System role not supported') }}{%- endif %}")
ALTERNATING = CHATML_TRAINING.replace(LOOP, LOOP + "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                                      "{{ raise_exception('Conversation roles must alternate user/assistant/user/"
                                      "assistant/...') }}{%- endif %}")


def short_rows(n: int, prefix: str = "q") -> list[dict]:
    return [{"Question": f"{prefix}{i}?", "Complex_CoT": f"because {i}", "Response": f"answer {i}"} for i in range(n)]


def long_rows(n: int) -> list[dict]:
    return [{"Question": f"q{i}? " + "word " * 300, "Complex_CoT": "x " * 300, "Response": "y"} for i in range(n)]


def chats(n: int, sharegpt: bool = False, system: bool = False, repeat_user: int = 0) -> list[dict]:
    """n conversations without a system turn (unless `system`); the first `repeat_user` have two user turns
    in a row."""
    out = []
    for i in range(n):
        turns = [("system", "Be brief.")] if system else []
        turns += [("user", f"question {i}?")] + ([("user", "and?")] if i < repeat_user else [])
        turns += [("assistant", f"<think>because {i}</think>answer {i}")]
        if sharegpt:
            names = {"system": "system", "user": "human", "assistant": "gpt"}
            out.append({"conversations": [{"from": names[r], "value": c} for r, c in turns]})
        else:
            out.append({"messages": [{"role": r, "content": c} for r, c in turns]})
    return out


def mixture(sources: list[dict], **data) -> dict:
    return recipe_with(data__source=None, data__sources=sources, training__max_length=256, **data)


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written

CASES = {
    "roles beside format think": (recipe_with(data__roles={"bot": "assistant"}), {},
                                  "data.roles is set but data.format is think"),
    "messages_column beside format think": (recipe_with(data__messages_column="chat"), {},
                                            "set data.format: messages"),
    "source messages_column beside its format think": (
        mixture([{"source": "data/rows.json", "messages_column": "chat"}, {"source": "data/rows.json"}]), {},
        "data.sources[0].messages_column is set but its format is think"),
    "split seed negative": (recipe_with(data__split_seed=-1), {}, "data.split_seed must be in [0, 2**32)"),
    "split seed too large": (recipe_with(data__split_seed=2**32), {}, "data.split_seed must be in [0, 2**32)"),
    "split left empty": (recipe_with(data__source="d12.json", data__val_fraction=0.05),
                         {"d12.json": json.dumps(short_rows(12))}, "leaves the validation split of 12 usable rows"),
    "mixture source split left empty": (
        mixture([{"source": "data/rows.json"}, {"source": "d12.json"}], data__val_fraction=0.05),
        {"d12.json": json.dumps(short_rows(12))}, "leaves the validation split of 12 usable rows of d12.json empty"),
    "upsample unbounded": (mixture([{"source": "a.json", "weight": 0.999}, {"source": "b.json", "weight": 0.001}],
                                   data__weighting="upsample"),
                           {"a.json": json.dumps(short_rows(220)), "b.json": json.dumps(short_rows(220, "b"))},
                           "more than data.max_repeats=100"),
    "weight leaves a source no row": (mixture([{"source": "a.json", "weight": 0.999},
                                               {"source": "b.json", "weight": 0.001}]),
                                      {"a.json": json.dumps(short_rows(220)), "b.json": json.dumps(short_rows(220, "b"))},
                                      "weight 0.001 gives b.json none of its 176 training rows"),
    "mixture source all too long": (mixture([{"source": "short.json", "weight": 0.5}, {"source": "long.json", "weight": 0.5}]),
                                    {"short.json": json.dumps(short_rows(100)), "long.json": json.dumps(long_rows(60))},
                                    "holds no row of long.json (all 48 are longer than training.max_length=256)"),
    "unweighted source all too long": (mixture([{"source": "short.json"}, {"source": "long.json"}]),
                                       {"short.json": json.dumps(short_rows(100)), "long.json": json.dumps(long_rows(60))},
                                       "holds no row of long.json"),
    "share far from weight": (mixture([{"source": "short.json", "weight": 0.5}, {"source": "mixed.json", "weight": 0.5}]),
                              {"short.json": json.dumps(short_rows(100)),
                               "mixed.json": json.dumps(long_rows(50) + short_rows(50, "m"))},
                              "mixed.json is 31.6% of the training split, not its weight 50.0% (43 of its rows"),
    "template end-of-turn not a token": (recipe_with(model__chat_template="eot.jinja"),
                                         {"eot.jinja": CHATML_TRAINING.replace("<|im_end|>", "<|eot_id|>")},
                                         "ends an assistant turn with '<|eot_id|>', which is not a token"),
    "template writes no end-of-turn": (recipe_with(model__chat_template="open.jinja"),
                                       {"open.jinja": "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + "
                                                      "'\\n' }}{% endfor %}"},
                                       "writes nothing after an assistant's message"),
    "template refuses some rows": (recipe_with(data__source="chats.json", data__format="messages",
                                               model__chat_template="alternating.jinja"),
                                   {"chats.json": json.dumps(chats(40, repeat_user=40)),
                                    "alternating.jinja": ALTERNATING},
                                   "refuses 40 of 40 data rows (row "),
    "template refuses the system prompt": (recipe_with(data__system_prompt="Be brief.",
                                                       model__chat_template="nosys.jinja"),
                                           {"nosys.jinja": NO_SYSTEM}, ": System role not supported)"),
    "template file missing": (recipe_with(model__chat_template="gone.jinja"), {},
                              "model.chat_template file 'gone.jinja' not found"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_data_input(name, workspace):  # noqa: F811
    recipe, files, expected = CASES[name]
    # max_steps 1: a case that wrongly passes trains for seconds, not an epoch
    recipe = {**recipe, "training": {**recipe["training"], "max_steps": 1}, "output": {"dir": "runs/new"}}
    run_case(workspace, ["train", "recipe.yaml"], expected, files={"recipe.yaml": recipe_file(recipe), **files})


# ---------------------------------------------------------------- behaviour


def test_split_sizes_are_datasets_own():
    """The split's emptiness check predicts exactly the sizes datasets gives (a prediction off by one would
    refuse a valid split or let datasets raise)."""
    from datasets import Dataset

    from medsft.data.load import split, split_sizes
    from medsft.errors import MedsftError

    for n in range(10, 45):
        for v, t in [(0.1, 0.1), (0.05, 0.1), (0.3, 0.2), (0.1, 0.0), (0.0, 0.1), (0.33, 0.33), (0.02, 0.02)]:
            d = DataSection(val_fraction=v, test_fraction=t)
            want = split_sizes(n, d)
            try:
                got = {k: len(x) for k, x in split(Dataset.from_dict({"a": list(range(n))}), d).items()}
            except MedsftError:
                assert any(size == 0 for k, size in want.items() if k == "train" or d.model_dump()[
                    {"validation": "val_fraction", "test": "test_fraction"}.get(k, "val_fraction")]), (n, v, t)
                continue
            assert got == want, (n, v, t)


def write(tmp_path, name: str, rows) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(rows))
    return str(path)


def data_command(tmp_path, recipe: dict, *extra):
    recipe = {**recipe, "output": {"dir": str(tmp_path / "run")}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    res = run_cli_here("data", path, "--limit", "1", *extra, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return " ".join(res.stdout.split())


@pytest.mark.slow
def test_mixture_says_what_it_became(tmp_path):
    """Upsampling says how often each row repeats; every source's kept rows, trained rows and share are shown;
    `medsft data` says when train would refuse, and allow_share_drift lets the drifted mixture through."""
    a, b = write(tmp_path, "a.json", short_rows(100)), write(tmp_path, "b.json", short_rows(50, "b"))
    out = data_command(tmp_path, mixture([{"source": a, "weight": 0.25}, {"source": b, "weight": 0.75}],
                                         data__weighting="upsample"))
    assert ("data: mixture — a.json: 100 of 100 rows kept, 80 trained, share 0.250 (weight 0.250); "
            "b.json: 50 of 50 rows kept, 240 trained (40 rows, ×6.0), share 0.750 (weight 0.750)") in out
    mixed = write(tmp_path, "mixed.json", long_rows(50) + short_rows(50, "m"))
    drifted = mixture([{"source": a, "weight": 0.5}, {"source": mixed, "weight": 0.5}])
    out = data_command(tmp_path, drifted)
    assert "mixed.json: 100 of 100 rows kept, 37 trained, 43 longer than training.max_length=256 dropped" in out
    assert "medsft train refuses this mixture: data.sources: mixed.json is 31.6% of the training split" in out
    out = data_command(tmp_path, {**drifted, "data": {**drifted["data"], "allow_share_drift": True}})
    assert "share 0.316 (weight 0.500)" in out and "refuses" not in out


def test_template_file_end_of_turn_becomes_eos(tmp_path):
    """A template file ending assistant turns with another token of the vocabulary (<|endoftext|> here): that
    token becomes eos, and it is the last trained label of every row, so generation stops where training
    taught it to."""
    template = tmp_path / "eot.jinja"
    template.write_text(CHATML_TRAINING.replace("'<|im_end|>' + '\\n'", "'<|endoftext|>'"))
    recipe = recipe_with(model__chat_template=str(template), data__source=write(tmp_path, "r.json", short_rows(40)))
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    from transformers import AutoTokenizer

    from medsft.model.builtin.tiny_model import TINY_MODEL, builtin_model_dir

    eos = AutoTokenizer.from_pretrained(builtin_model_dir(TINY_MODEL)).convert_tokens_to_ids("<|endoftext|>")
    res = run_cli_here("data", tmp_path / "recipe.yaml", "--json", cwd=tmp_path, timeout=300)
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert res.returncode == 0 and len(rows) == 32, res.stderr[-3000:]
    assert all([lab for lab in r["labels"] if lab != -100][-1] == eos == r["input_ids"][-1] for r in rows)


@pytest.mark.slow
def test_openai_and_sharegpt_mixture_trains_with_a_template_without_system_turns(tmp_path):
    """An OpenAI `messages` source and a ShareGPT `conversations` source train together, through a template
    that refuses system turns (the data has none, and medsft adds none); the manifest records each source's
    share and its rows dropped for length."""
    template = tmp_path / "nosys.jinja"
    template.write_text(NO_SYSTEM)
    recipe = mixture([{"source": write(tmp_path, "openai.json", chats(40)), "weight": 0.5},
                      {"source": write(tmp_path, "share.json", chats(40, sharegpt=True)), "weight": 0.5}],
                     data__format="messages", model__chat_template=str(template),
                     training__max_steps=2, training__eval_strategy="no")
    recipe["output"] = {"dir": str(tmp_path / "run")}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    res = run_cli("train", path, cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "data: mixture — openai.json: 40 of 40 rows kept, 32 trained, share 0.500 (weight 0.500)" in \
        " ".join((res.stdout + res.stderr).split())
    manifest = json.loads((tmp_path / "run" / "adapter" / "manifest.json").read_text())
    sources = manifest["data"]["sources"]
    assert [(s["train"], s["share"], s["overlong_dropped"]["train"]) for s in sources.values()] == [
        (32, 0.5, 0), (32, 0.5, 0)]
    assert (tmp_path / "run" / "adapter" / "chat_template.jinja").read_text() == NO_SYSTEM
