"""data.sources: several sources with a weight or a row cap each; per-source counts; a split that the seed
fixes; sources of different formats and column names in one run."""

from __future__ import annotations

import json

import pytest

from medsft.data.load import load_raw, load_splits
from medsft.data.mixture import sample_rows, weighted_sizes
from medsft.recipe.data_section import DataSection
from tests.conftest import REPO, run_cli, run_cli_here
from tests.template_fixtures import conversations

pytestmark = pytest.mark.slow  # trains the tiny model


def twice(demo_json, w1=0.75, w2=0.25, **extra) -> DataSection:
    return DataSection(sources=[{"source": str(demo_json), "weight": w1}, {"source": str(demo_json), "weight": w2}],
                       **extra)


def ids(splits) -> dict:
    return {name: list(ds["row_id"]) for name, ds in splits.items()}


def test_weighted_sizes():
    assert weighted_sizes([158, 158], [0.75, 0.25], "downsample") == [158, 53]
    assert weighted_sizes([158, 158], [0.75, 0.25], "upsample") == [474, 158]
    assert weighted_sizes([100, 1000], [0.5, 0.5], "downsample") == [100, 100]
    assert weighted_sizes([100, 1000], [0.5, 0.5], "upsample") == [1000, 1000]
    picks = sample_rows(10, 25, 816, 1)
    assert len(picks) == 25 and all(picks.count(i) in (2, 3) for i in range(10))
    assert sample_rows(10, 25, 816, 1) == picks and sample_rows(10, 25, 817, 1) != picks


def test_demo_twice_weighted_counts_and_reproducible_split(demo_json):
    splits, report = load_splits(twice(demo_json))
    assert len(load_raw(twice(demo_json))) == 396 and [s.name for s in report.sources] == ["medical-o1-demo.json#1", "medical-o1-demo.json#2"]
    counts = report.source_counts(ids(splits))
    assert {n: (c["rows"], c["kept"], c["train"], c["validation"], c["test"]) for n, c in counts.items()} == {
        "medical-o1-demo.json#1": (198, 198, 158, 20, 20), "medical-o1-demo.json#2": (198, 198, 53, 20, 20)}
    assert (counts["medical-o1-demo.json#1"]["weight"], counts["medical-o1-demo.json#2"]["weight"]) == (0.75, 0.25)
    assert ids(load_splits(twice(demo_json))[0]) == ids(splits), "same seed, same rows"
    other = ids(load_splits(twice(demo_json, split_seed=1))[0])
    assert other["train"] != ids(splits)["train"] and other["test"] != ids(splits)["test"]
    # each source split with the seed: its held-out rows are the notebook's; no question both trained and held out
    single, _ = load_splits(DataSection(source=str(demo_json)))
    assert [r - 198 for r in ids(splits)["test"] if r >= 198] == ids(single)["test"]
    question = lambda ds: {p[-1]["content"] for p in ds["prompt"]}  # noqa: E731
    assert not question(splits["train"]) & (question(splits["test"]) | question(splits["validation"]))
    assert len(set(ids(splits)["train"])) == 158 + 53, "downsampling never repeats a row"


def test_upsample_repeats_the_smaller_share(demo_json):
    splits, report = load_splits(twice(demo_json, 0.25, 0.75, weighting="upsample"))
    counts = report.source_counts(ids(splits))
    assert (counts["medical-o1-demo.json#1"]["train"], counts["medical-o1-demo.json#2"]["train"]) == (158, 474)
    assert len(set(ids(splits)["train"])) == 158 + 158
    assert ids(load_splits(twice(demo_json, 0.25, 0.75, weighting="upsample"))[0]) == ids(splits)


def test_row_caps_and_unweighted_sources(demo_json):
    d = DataSection(sources=[{"source": str(demo_json), "max_rows": 50}, {"source": "builtin:tiny-medical",
                                                                          "max_rows": 100}])
    splits, report = load_splits(d)
    raw = load_raw(d)
    counts = report.source_counts(ids(splits))
    assert len(raw) == 150 and list(raw["medsft_source"]).count(1) == 100
    assert {n: (c["train"], c["validation"], c["test"]) for n, c in counts.items()} == {
        "medical-o1-demo.json": (40, 5, 5), "builtin:tiny-medical": (80, 10, 10)}
    assert "medical-o1-demo.json: 50 of 50; builtin:tiny-medical: 100 of 100" in report.summary()


def test_sources_of_different_formats_and_columns(demo_json, tiny_dir, tmp_path):
    """A think source, a ShareGPT conversation source and a source with other column names (huatuo): one
    mixture, columns renamed to the data section's, each kind prepared the way it trains."""
    from transformers import AutoTokenizer

    from medsft.data import tokenized

    rows = json.loads(demo_json.read_text())
    share = tmp_path / "share.json"
    share.write_text(json.dumps(conversations(rows[:40], turns=2, sharegpt=True)))
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text("".join(json.dumps({"q": r["Question"], "cot": r["Complex_CoT"], "a": r["Response"]}) + "\n"
                               for r in rows[:30]))
    d = DataSection(sources=[
        {"source": str(demo_json), "max_rows": 60},
        {"source": str(share), "format": "messages"},
        {"source": str(renamed), "format": "huatuo", "question_column": "q", "reasoning_column": "cot",
         "response_column": "a"}])
    splits, report = load_splits(d)
    raw = load_raw(d)
    assert {"Question", "Complex_CoT", "Response", "messages", "medsft_source", "options"} <= set(raw.column_names)
    assert raw[100]["Question"] == rows[0]["Question"] and raw[100]["messages"] is None
    counts = report.source_counts(ids(splits))
    assert [(c["format"], c["train"], c["validation"], c["test"]) for c in counts.values()] == [
        ("think", 48, 6, 6), ("messages", 32, 4, 4), ("huatuo", 24, 3, 3)]
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    prepared = tokenized.tokenize(splits["train"], tok, name="train")
    assert list(prepared["row_id"]) == list(splits["train"]["row_id"]), "order kept across kinds"
    for ex, formatted in zip(prepared, splits["train"]):
        trained = tok.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != -100])
        if formatted["messages"]:
            answers = [m["content"] for m in formatted["messages"] if m["role"] == "assistant"]
            assert trained == "".join(a + "<|im_end|>\n" for a in answers)
        else:
            assert trained == formatted["completion"][0]["content"] + "<|im_end|>\n"
            layout = "## Thinking" if report.source_of(ex["row_id"]) == "renamed.jsonl" else "<think>"
            assert trained.startswith(layout)


def test_data_command_reports_sources(demo_json, tmp_path):
    recipe = yaml_recipe(tmp_path, {"sources": [{"source": str(demo_json), "weight": 0.75},
                                                {"source": str(demo_json), "weight": 0.25, "format": "huatuo"}]})
    res = run_cli_here("data", recipe, "--limit", "2", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "sources" in res.stdout and "medical-o1-demo.json#2" in res.stdout
    assert "(medical-o1-demo.json#1)" in res.stdout and "(medical-o1-demo.json#2)" in res.stdout
    assert "data: 396 of 396 rows kept — medical-o1-demo.json#1: 198 of 198 (weight 0.75)" in " ".join(res.stdout.split())
    res = run_cli_here("data", recipe, "--json", timeout=300)
    examples = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(examples) == 211
    assert {e["source"] for e in examples} == {"medical-o1-demo.json#1", "medical-o1-demo.json#2"}


def yaml_recipe(tmp_path, data: dict):
    import yaml

    base = yaml.safe_load((REPO / "recipes" / "tiny-cpu.yaml").read_text())
    base["data"] = data
    base["training"]["max_length"] = 4096
    base["output"] = {"dir": str(tmp_path / "run")}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


@pytest.mark.slow
def test_mixture_trains_with_per_source_counts_in_the_manifest(demo_json, tmp_path):
    rows = json.loads(demo_json.read_text())
    share = tmp_path / "share.json"
    share.write_text(json.dumps(conversations(rows[:40], turns=3, sharegpt=True)))
    recipe = yaml_recipe(tmp_path, {"sources": [{"source": str(demo_json), "weight": 0.8},
                                                {"source": str(share), "format": "messages", "weight": 0.2}]})
    res = run_cli("train", recipe, "--set", "training.max_steps=3", "--set", "training.eval_strategy=no",
                  "--set", "training.max_length=16384", timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = json.loads((tmp_path / "run" / "adapter" / "manifest.json").read_text())
    sources = manifest["data"]["sources"]
    assert [(s["format"], s["weight"], s["train"], s["validation"], s["test"]) for s in sources.values()] == [
        ("think", 0.8, 128, 20, 20), ("messages", 0.2, 32, 4, 4)]
    assert manifest["data"]["split_sizes"] == {"train": 160, "validation": 24, "test": 24}
