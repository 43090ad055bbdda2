"""Medical multiple-choice benchmarks the way the papers report them: files, prompts, scoring.

Why: HuatuoGPT-o1 (the dataset's authors) report MedQA, MedMCQA, PubMedQA, MMLU-Pro and GPQA from one
file of items `{"question", "options": {"A": …}, "answer_idx", "source"}`, generated with sampling and
scored on the text after the reasoning. To set our numbers beside theirs, medsft reads the same files
(a JSON list, JSONL, or their `{source: [items]}` layout), poses the items with the same prompt, and
scores with one fixed rule (medsft/evaluation/answers.py: the first answer statement after the reasoning). The
same scorer serves `medsft score` for generations made by another engine (vLLM, SGLang).
Pure: no torch and no model. Every file is read and checked here before anything heavy loads, and
every mistake in one is one line naming the file and the item.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from statistics import mean, stdev
from typing import TYPE_CHECKING, Any

from medsft.errors import MedsftError
from medsft.evaluation.answers import LETTERS, Item, read_output

if TYPE_CHECKING:
    from medsft.evaluation.report import Report

# how an item is posed; "huatuo" and "huatuo-strict" are HuatuoGPT-o1's evaluation prompts (their
# evaluation/eval.py, default and --strict_prompt), options listed as "A. text" one per line
PROMPTS = {
    "huatuo": "Please answer the following multiple-choice question:\n{question}\n{options}",
    "huatuo-strict": "Please answer the following multiple-choice questions, ensuring your response concludes "
                     "with the correct option in the format: 'The answer is A.'.\n{question}\n{options}",
    "medsft": "{question}\n\n{options}\n\nAnswer with the letter of the correct option.",  # as MedQA poses it
}
DEFAULT_PROMPT = "huatuo"
ITEM_FIX = 'write items as {"question": "...", "options": {"A": "...", "B": "..."}, "answer_idx": "A", "source": "..."}'


def pose(item: Item, prompt: str = DEFAULT_PROMPT) -> str:
    """The user turn for an item (the chat template and system prompt are added at generation)."""
    return pose_question(item.question, item.options, prompt)


def pose_question(question: str, options: dict[str, str], prompt: str = DEFAULT_PROMPT) -> str:
    """A question with lettered options, one "A. text" per line in letter order, in one of PROMPTS."""
    listed = "\n".join(f"{k}. {v}" for k, v in sorted(options.items()))
    return PROMPTS[prompt].format(question=question.strip(), options=listed)


def _read_text(path: Path, what: str, fix: str) -> str:
    if not path.is_file():
        raise MedsftError(f"{what} {str(path)!r} not found" if not path.exists() else f"{what} {str(path)!r} is not "
                          "a file", fix)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MedsftError(f"{what} {str(path)!r} is not UTF-8 text", "save it as UTF-8 JSON or JSONL") from None


def _json_or_jsonl(path: Path, text: str, fix: str) -> Any:
    """A whole-file JSON value, else a list of JSON lines; neither → one line naming the first bad line."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    values = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except ValueError as err:  # a JSONDecodeError, or another ValueError (an integer of over 4300 digits)
            why = err.msg if isinstance(err, json.JSONDecodeError) else err
            raise MedsftError(f"{path} is neither JSON nor JSONL (line {number}: {why})", fix) from None
    return values


def read_benchmark(path: str | Path) -> list[Item]:
    """Items of one benchmark file. `source` is optional (missing → the file's name)."""
    path = Path(path).expanduser()
    text = _read_text(path, "benchmark file", "pass a JSON list or JSONL of multiple-choice items")
    data = _json_or_jsonl(path, text, ITEM_FIX)
    if isinstance(data, dict) and "question" not in data:  # HuatuoGPT-o1's eval_data.json: {source: [items]}
        if not all(isinstance(v, list) for v in data.values()):
            raise MedsftError(f"{path} is a JSON object but not {{source: [items]}}", ITEM_FIX)
        data = [dict(item, source=item.get("source", src)) if isinstance(item, dict) else item
                for src, items in data.items() for item in items]
    elif isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise MedsftError(f"{path} has no items", ITEM_FIX)
    return [_item(raw, f"{path} item {n}", path.stem) for n, raw in enumerate(data, 1)]


def _item(raw: Any, where: str, default_source: str) -> Item:
    if not isinstance(raw, dict):
        raise MedsftError(f"{where} is not a JSON object", ITEM_FIX)
    question = raw.get("question")
    if not isinstance(question, str) or not question.strip():
        raise MedsftError(f"{where} has no 'question' string", ITEM_FIX)
    options = raw.get("options")
    if not isinstance(options, dict) or len(options) < 2:
        raise MedsftError(f"{where} has no options (needs an 'options' object with at least two lettered options)",
                          ITEM_FIX)
    bad = [k for k in options if not (isinstance(k, str) and len(k) == 1 and k in LETTERS)]
    if bad:
        raise MedsftError(f"{where} has option key {bad[0]!r} (option keys are single capital letters A–Z)", ITEM_FIX)
    if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v).strip()
               for v in options.values()):
        raise MedsftError(f"{where} has an empty or non-text option", "give every option its text")
    answer = raw.get("answer_idx")
    if answer not in options:
        raise MedsftError(f"{where} has answer_idx {answer!r}, not one of its options {', '.join(sorted(options))}",
                          "set answer_idx to the letter of the correct option")
    assert isinstance(answer, str)  # one of the option keys, each a letter
    source = raw.get("source", default_source)
    if not isinstance(source, str) or not source.strip():
        raise MedsftError(f"{where} has a 'source' that is not a name", 'e.g. "source": "MedQA_USLME_test"')
    return Item(question, {k: str(v) for k, v in options.items()}, answer, source.strip())


def read_benchmarks(paths: Iterable[str | Path], limit: int | None = None) -> list[Item]:
    """The items of every file, in order; with `limit`, the first `limit` items of each source."""
    items = [item for p in paths for item in read_benchmark(p)]
    if limit is None:
        return items
    seen: dict[str, int] = {}
    kept = []
    for item in items:
        seen[item.source] = seen.get(item.source, 0) + 1
        if seen[item.source] <= limit:
            kept.append(item)
    return kept


def read_predictions(path: str | Path, items: list[Item]) -> list[list[str]]:
    """The generated texts for each item: one JSON object per item, in the benchmark's order, with
    `output` (the full text, reasoning included) or `outputs` (several samples, as `eval` writes)."""
    path = Path(path).expanduser()
    fix = 'one JSON object per benchmark item, in the file\'s order: {"output": "<full generated text>"}'
    data = _json_or_jsonl(path, _read_text(path, "predictions file", fix), fix)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise MedsftError(f"{path} is not a list of predictions", fix)
    if len(data) != len(items):
        raise MedsftError(f"{path} has {len(data)} predictions for {len(items)} benchmark items", fix)
    outputs: list[list[str]] = []
    for n, (pred, item) in enumerate(zip(data, items), 1):
        where = f"{path} prediction {n}"
        if not isinstance(pred, dict):
            raise MedsftError(f"{where} is not a JSON object", fix)
        texts = pred.get("outputs", [pred.get("output")])
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise MedsftError(f"{where} has no 'output' string", fix)
        if outputs and len(texts) != len(outputs[0]):
            raise MedsftError(f"{where} has {len(texts)} outputs, prediction 1 has {len(outputs[0])}",
                              "give every item the same number of samples")
        if pred.get("index", n - 1) != n - 1 or pred.get("question", item.question).strip() != item.question.strip():
            raise MedsftError(f"{where} belongs to another item than benchmark item {n}",
                              "write the predictions in the benchmark file's order")
        outputs.append(texts)
    return outputs


def score(items: list[Item], outputs: list[list[str]], fmt: str = "think") -> tuple[dict, list[dict]]:
    """({"overall": bucket, "by_source": {source: bucket}}, one record per item). Each output is read by
    answers.read_output; accuracy is over every generation (several samples per item weigh equally)."""
    records = []
    for index, (item, texts) in enumerate(zip(items, outputs)):
        readings = [read_output(t, item.options, fmt) for t in texts]
        records.append({"index": index, "source": item.source, "answer_idx": item.answer_idx,
                        "choices": [r.first for r in readings], "last": [r.last for r in readings],
                        "how": [r.how for r in readings], "correct": [r.first == item.answer_idx for r in readings],
                        "chance": 1 / len(item.options)})
    sources = list(dict.fromkeys(item.source for item in items))
    return ({"overall": bucket(records),
             "by_source": {s: bucket([r for r in records if r["source"] == s]) for s in sources}}, records)


def bucket(records: list[dict]) -> dict:
    """Accuracy (first statement), its standard error over items, and what could not be read."""
    how = [h for r in records for h in r["how"]]
    per_item = [mean(r["correct"]) for r in records]
    first = mean(c for r in records for c in r["correct"])
    last = mean(choice == r["answer_idx"] for r in records for choice in r["last"])
    return {
        "accuracy": first,
        "n": len(records),
        "no_answer": sum(h in ("none", "unclosed") for h in how),
        "stderr": stdev(per_item) / math.sqrt(len(per_item)) if len(per_item) > 1 else 0.0,
        "generations": len(how),
        "text_fallback": how.count("text"),
        "unclosed_reasoning": how.count("unclosed"),
        "last_statement_accuracy": last,
        "best_of_first_last": max(first, last),  # what HuatuoGPT-o1's scorer reports (optimistic)
        "chance": mean(r["chance"] for r in records),
    }


def run_score(items: list[Item], outputs: list[list[str]], *, files: Iterable[str | Path], predictions: Path,
              output_dir: str | Path) -> Report:
    """`medsft score FILE --predictions PRED.jsonl`: score generations made elsewhere, report and write."""
    from medsft.evaluation.report import report

    summary, records = score(items, outputs)
    settings = {"predictions": str(predictions), "files": [str(f) for f in files], "format": "auto (think or huatuo)",
                "samples": len(outputs[0]), "metric": "first answer statement after the reasoning"}
    result = {**summary, "settings": settings}
    return report({predictions.stem: result}, items, output_dir, per_item={"scores": records}, single=True)
