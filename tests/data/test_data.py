"""Rows → prompt/completion, bad-row accounting, and the notebook's exact split."""

from __future__ import annotations

import json

import pytest

from medsft.data.load import load_raw, load_splits, split, to_prompt_completion
from medsft.errors import MedsftError
from medsft.recipe.data_section import DataSection


def test_split_matches_notebook(demo_json):
    d = DataSection(source=str(demo_json))
    splits, report = load_splits(d)
    raw = load_raw(d)
    # the notebook: train_test_split(0.2, seed=816), then the 20% halved with the same seed
    first = raw.train_test_split(test_size=0.2, seed=816)
    second = first["test"].train_test_split(test_size=0.5, seed=816)
    q = lambda ds: [r[0]["content"] for r in ds["prompt"]]  # noqa: E731
    assert q(splits["train"]) == first["train"]["Question"]
    assert q(splits["validation"]) == second["train"]["Question"]
    assert q(splits["test"]) == second["test"]["Question"]
    assert sorted(splits["test"]["row_id"]) == sorted(raw["Question"].index(x) for x in second["test"]["Question"])
    assert report.kept == report.total == 198


def test_prompt_completion_format(demo_json):
    from datasets import Dataset

    rows = json.loads(demo_json.read_text())[:3]
    ds, _ = to_prompt_completion(Dataset.from_list(rows), DataSection(system_prompt="Be careful."))
    ex = ds[1]
    assert ex["row_id"] == 1
    assert ex["prompt"] == [{"role": "system", "content": "Be careful."}, {"role": "user", "content": rows[1]["Question"]}]
    assert ex["completion"] == [{"role": "assistant",
                                 "content": f"<think>{rows[1]['Complex_CoT']}</think>{rows[1]['Response']}"}]


def test_bad_rows_are_dropped_and_counted():
    from datasets import Dataset

    good = [{"Question": f"q{i}", "Complex_CoT": "c", "Response": "r"} for i in range(48)]
    rows = good + [{"Question": "", "Complex_CoT": "c", "Response": "r"},
                   {"Question": "q", "Complex_CoT": None, "Response": "r"}]
    ds, report = to_prompt_completion(Dataset.from_list(rows), DataSection(max_bad_fraction=0.05))
    assert (report.total, report.kept, report.dropped) == (50, 48, 2)
    assert report.summary() == "data: 48 of 50 rows kept; 2 dropped (1 empty Question, 1 missing Complex_CoT)"
    with pytest.raises(MedsftError, match="more than data.max_bad_fraction=0.01"):
        to_prompt_completion(Dataset.from_list(rows), DataSection(max_bad_fraction=0.01))


def test_custom_columns():
    from datasets import Dataset

    rows = [{"q": f"q{i}", "cot": "c", "a": "r"} for i in range(20)]
    d = DataSection(question_column="q", reasoning_column="cot", response_column="a")
    ds, _ = to_prompt_completion(Dataset.from_list(rows), d)
    parts = split(ds, d)
    assert (len(parts["train"]), len(parts["validation"]), len(parts["test"])) == (16, 2, 2)


@pytest.mark.parametrize("cap", [None, 120])
def test_one_source_written_either_way_holds_out_the_same_rows(demo_json, tmp_path, cap):
    """`data.source` and a one-entry `data.sources` are the same recipe: the same splits, the same held-out rows
    evaluation reloads (with and without a row cap), the same questions."""
    from medsft.evaluation.evaluate import held_out_rows
    from medsft.recipe.schema import build

    def held_out(data: dict):
        recipe = build({"model": {"name": "builtin:tiny-qwen2"}, "data": data, "output": {"dir": str(tmp_path / "r")}},
                       "recipe.yaml")
        splits, report = load_splits(recipe.data)
        (tmp_path / "test_ids.json").write_text(json.dumps(list(splits["test"]["row_id"])))
        rows = held_out_rows(tmp_path, recipe)
        return {name: list(ds["row_id"]) for name, ds in splits.items()}, rows, report

    one, one_rows, one_report = held_out({"source": str(demo_json), "max_rows": cap})
    listed, listed_rows, listed_report = held_out({"sources": [{"source": str(demo_json), "max_rows": cap}]})
    assert one == listed and one_rows == listed_rows
    assert len(one_rows) == (12 if cap else 20) and max(one["train"] + one["test"]) < (cap or 198)
    assert [r["Question"] for r in one_rows] == [json.loads(demo_json.read_text())[i]["Question"] for i in one["test"]]
    assert one_report.summary() == listed_report.summary() == f"data: {cap or 198} of {cap or 198} rows kept"
