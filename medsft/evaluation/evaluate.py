"""`medsft eval ADAPTER_DIR`: the held-out test split, with and without the adapter.

Why: loss curves say little about a reasoning model; users need to know whether it answers in the
trained format, stops, and gets multiple-choice items right, compared with the base model. Measured:
- NLL and perplexity over completion tokens only (teacher-forced, batched, TRL's own labels);
- on up to N test rows, generation: share with a well-formed closed `<think>` block, non-empty answer,
  stopped at end-of-turn, mean reasoning/answer length (tokens of the generated text);
- multiple-choice accuracy on rows with `options` and `answer_idx` (MedQA style), the question posed
  with lettered options and the letter extracted by medsft.evaluation.answers;
- the same for the base model (adapter disabled) and the difference. Written to eval.json in the run's eval/ (commands/places.py).
The scoring functions take a plain `generate(questions) -> texts` function, so they are tested with
scripted outputs. `medsft eval --benchmark FILE` (run_benchmark) measures published benchmarks instead:
medsft/evaluation/benchmark.py reads and scores them, medsft/evaluation/report.py reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from statistics import mean
from typing import TYPE_CHECKING, Any, cast

from medsft.data.formats import format_metrics
from medsft.evaluation.answers import read_output
from medsft.evaluation.benchmark import pose_question

if TYPE_CHECKING:
    from datasets import Dataset

    from medsft.evaluation.answers import Item
    from medsft.evaluation.generate import Progress, Settings
    from medsft.evaluation.report import Report
    from medsft.recipe.schema import Recipe

Generate = Callable[[list[str]], list[dict]]  # records as generate.generate_batch returns them


def mc_items(rows: list[dict]) -> list[dict]:
    return [r for r in rows if isinstance(r.get("options"), dict) and r.get("answer_idx") in (r.get("options") or {})]


def mc_accuracy(items: list[dict], generate: Generate, question_column: str = "Question", fmt: str = "think") -> dict:
    """Accuracy of the letters read from the generated answers (None counts as wrong). The MC item's own
    `question` (MedQA style) is posed when the row has one, else the dataset's question column, with
    benchmark's "medsft" prompt."""
    if not items:
        return {}
    prompts = [pose_question(item.get("question") or item[question_column], item["options"], "medsft")
               for item in items]
    records = generate(prompts)
    chosen = [read_output(r["text"], item["options"], fmt).first for r, item in zip(records, items)]
    correct = [c == item["answer_idx"] for c, item in zip(chosen, items)]
    return {"n": len(items), "accuracy": mean(correct), "unparsed": mean(c is None for c in chosen)}


def completion_nll(model: Any, prepared: Dataset, batch_size: int = 4) -> dict:
    """Mean NLL per completion token (labels != -100), teacher-forced."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    device = next(model.parameters()).device
    rows = [(r["input_ids"], r["labels"]) for r in prepared]
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.tensor([i + [0] * (width - len(i)) for i, _ in chunk], device=device)
            mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in chunk], device=device)
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in chunk], device=device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100,
                                     reduction="sum").item()
            count += int((target != -100).sum())
    nll = total / max(count, 1)
    return {"nll": nll, "perplexity": math.exp(nll) if nll < 50 else float("inf"), "tokens": count}


HELD_OUT_FIX = "evaluate on benchmark files instead: medsft eval ADAPTER --benchmark FILE"


def held_out_ids(adapter_dir: str | Path, recipe: Recipe) -> list[int]:
    """The test split's row ids (test_ids.json, saved at training), checked with the training data's
    presence before any model loads: unlike infer, merge and benchmarks, the held-out split needs the data."""
    import json
    from pathlib import Path

    from medsft.errors import MedsftError
    from medsft.recipe.data_section import check_data_files

    path = Path(adapter_dir) / "test_ids.json"
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MedsftError(f"{str(path)!r} not found: the held-out split is not known",
                          f"restore the test_ids.json the training wrote, or {HELD_OUT_FIX}") from None
    except (OSError, ValueError) as err:
        raise MedsftError(f"{str(path)!r} is not readable JSON ({type(err).__name__})",
                          f"restore the test_ids.json the training wrote, or {HELD_OUT_FIX}") from None
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise MedsftError(f"{str(path)!r} is not a list of row numbers",
                          f"restore the test_ids.json the training wrote, or {HELD_OUT_FIX}")
    if not ids:
        raise MedsftError(f"{str(path)!r} lists no rows (trained with data.test_fraction: 0?)", HELD_OUT_FIX)
    where = str(Path(adapter_dir) / "recipe.yaml")
    try:
        check_data_files(recipe.data, where)
    except MedsftError as err:
        raise MedsftError(f"the held-out split is read from the training data, and {err.what}",
                          f"put the training data back at that path, or {HELD_OUT_FIX}", where) from None
    return ids


def held_out_rows(adapter_dir: str | Path, recipe: Recipe) -> list[dict]:
    """The raw rows of the run's test split; ids beyond the data (another file at the same path) are refused."""
    from pathlib import Path

    from medsft.data import load as data
    from medsft.errors import MedsftError

    ids = held_out_ids(adapter_dir, recipe)
    raw = data.load_raw(recipe.data)
    if max(ids) >= len(raw):
        raise MedsftError(f"{str(Path(adapter_dir) / 'test_ids.json')!r} names row {max(ids)} but the training data "
                          f"has {len(raw)} rows (it changed since training)",
                          f"put back the data the adapter was trained on, or {HELD_OUT_FIX}")
    return [dict(raw[i]) for i in ids]


def run_eval(adapter_dir: str | Path, *, max_generations: int = 20, settings: Settings | None = None,
             with_base: bool = True, output_dir: str | Path | None = None, progress: Progress | None = None) -> dict:
    """Completion NLL, generation format and MC accuracy on the run's held-out rows, adapter and base; written to
    `output_dir`/eval.json (the command decides where: never inside the adapter). `progress(label, total)`: a
    context yielding `advance(n)`, for each model's generations (the commands pass a bar)."""
    from pathlib import Path

    from datasets import Dataset

    from medsft.adapter.load import load_for_inference, recipe_of
    from medsft.data import load as data
    from medsft.data import tokenized
    from medsft.evaluation.generate import Settings, generate_batch, no_progress
    from medsft.io.outputs import write_json

    adapter_dir = Path(adapter_dir)
    settings = settings or Settings()
    rows = held_out_rows(adapter_dir, recipe_of(adapter_dir))  # before the model: bad data is one line
    model, tokenizer, recipe = load_for_inference(adapter_dir)
    d = recipe.data
    formatted, _ = data.to_prompt_completion(Dataset.from_list(rows), d)
    prepared = tokenized.tokenize(formatted, tokenizer, name="test")
    # rows the training kept (test_ids.json): each has its question
    questions = cast("list[str]", [data.question_of(r, d) for r in rows][:max_generations])
    items = mc_items(rows)[:max_generations]

    progress = progress or no_progress
    advance: list[Callable[[int], None]] = [lambda n: None]

    def gen(prompts: list[str]) -> list[dict]:
        return generate_batch(model, tokenizer, prompts, settings, d.system_prompt, d.format, advance=advance[0])

    def measure(name: str) -> dict:
        with progress(f"{name}: generating", len(questions) + len(items)) as step:
            advance[0] = step
            return {"completion": completion_nll(model, prepared),
                    "generation": format_metrics(gen(questions), tokenizer, d.format),
                    "multiple_choice": mc_accuracy(items, gen, d.question_column, d.format)}

    results: dict[str, Any] = {"adapter": measure("adapter")}
    if with_base:
        with model.disable_adapter():
            results["base"] = measure("base")
        results["delta"] = {section: {k: v - results["base"][section][k] for k, v in vals.items()
                                      if isinstance(v, (int, float)) and k != "n" and k in results["base"][section]}
                            for section, vals in results["adapter"].items()}
    results["test_rows"], results["generated"], results["mc_items"] = len(rows), len(questions), len(items)
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        write_json(Path(output_dir) / "eval.json", results)

    return results


def run_benchmark(adapter_dir: str | Path, items: list[Item], *, settings: Settings, prompt: str, samples: int = 1,
                  engine: str = "transformers", with_base: bool = True, output_dir: str | Path | None = None,
                  files: Iterable[str | Path] = (), progress: Progress | None = None) -> Report | None:
    """`medsft eval ADAPTER --benchmark FILE`: adapter and base on the same prompts, `samples` generations
    per item, data-parallel under `accelerate launch`. The main rank scores, writes and returns the report
    (medsft/evaluation/report.py Report); the other ranks return None. `progress`: as generate_parallel's."""
    import time
    from contextlib import nullcontext
    from pathlib import Path

    from accelerate import PartialState

    from medsft.console import is_main
    from medsft.evaluation import benchmark
    from medsft.evaluation.generate import generate_parallel, no_progress
    from medsft.evaluation.report import report

    adapter_dir = Path(adapter_dir)
    questions = [benchmark.pose(item, prompt) for item in items for _ in range(samples)]  # item-major
    if engine == "vllm":
        from medsft.adapter.load import adapter_tokenizer, recipe_of
        from medsft.evaluation.generate import generate_vllm, load_vllm

        recipe = recipe_of(adapter_dir)
        tokenizer = adapter_tokenizer(adapter_dir, recipe)
        llm = load_vllm(recipe, adapter_dir, settings.seed)

        def generate(name: str) -> list[dict]:
            return generate_vllm(llm, tokenizer, questions, settings, recipe.data.system_prompt, recipe.data.format,
                                 adapter_dir if name == "adapter" else None)
    else:
        from medsft.adapter.load import load_for_inference

        model, tokenizer, recipe = load_for_inference(adapter_dir, data_parallel=True)

        def generate(name: str) -> list[dict]:
            with nullcontext() if name == "adapter" else model.disable_adapter():
                return generate_parallel(model, tokenizer, questions, settings, recipe.data.system_prompt,
                                         recipe.data.format, name, progress=progress or no_progress)

    runs: dict[str, tuple[list[dict], float]] = {}
    for name in ("adapter", "base") if with_base else ("adapter",):
        t0 = time.perf_counter()
        records = generate(name)
        runs[name] = (records, time.perf_counter() - t0)
    if not is_main():
        return None
    shared = {"engine": engine, "prompt": prompt, "prompt_template": benchmark.PROMPTS[prompt],
              "system_prompt": recipe.data.system_prompt, "format": recipe.data.format,
              "do_sample": settings.do_sample, "temperature": settings.temperature if settings.do_sample else None,
              "top_p": settings.top_p if settings.do_sample else None, "max_new_tokens": settings.max_new_tokens,
              "seed": settings.seed, "samples": samples, "batch_size": settings.batch_size,
              "processes": PartialState().num_processes, "files": [str(f) for f in files], "adapter": str(adapter_dir),
              "base_model": recipe.model.name, "metric": "first answer statement after the reasoning"}
    results: dict[str, dict] = {}
    per_item: dict[str, list[dict]] = {}
    for name, (records, seconds) in runs.items():
        per = [records[i * samples:(i + 1) * samples] for i in range(len(items))]  # each item's samples
        outputs = [[r["text"] for r in rs] for rs in per]
        summary, scored = benchmark.score(items, outputs, recipe.data.format)
        results[name] = {**summary, "settings": {**shared, "model": name},
                         "generation": {"seconds": seconds, "items_per_second": len(records) / max(seconds, 1e-9),
                                        "mean_new_tokens": mean(r["tokens"] for r in records),
                                        "hit_max_new_tokens": sum(not r["stopped"] for r in records)},
                         "predictions": f"predictions-{name}.jsonl"}
        # one line per item, in the benchmark's order: `medsft score FILE --predictions` reads it back
        per_item[f"predictions-{name}"] = [{**s, "question": item.question, "outputs": out,
                                            "tokens": [r["tokens"] for r in rs]}
                                           for s, item, out, rs in zip(scored, items, outputs, per)]
    return report(results, items, output_dir or adapter_dir / "benchmark", per_item=per_item)
