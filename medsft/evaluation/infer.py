"""`medsft infer ADAPTER_DIR`: ask the trained model, one question, a JSONL file, or interactively.

Why: the quickest check that an adapter learned to reason and to stop. The base model is loaded as it
was trained (the adapter's recipe.yaml), `--no-adapter` answers with the base alone for comparison,
and batch mode writes JSONL records (question, reasoning, answer, tokens, seconds).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsft.errors import MedsftError

if TYPE_CHECKING:
    from medsft.evaluation.generate import Progress, Settings
    from medsft.recipe.schema import Recipe


def read_questions(path: str) -> list[str]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise MedsftError(f"questions file {path!r} not found", "pass a .jsonl file with a 'question' per line")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MedsftError(f"questions file {path!r} is not UTF-8 text", "save it as UTF-8 JSONL") from None
    questions = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise MedsftError(f"{path} line {number} is not JSON", "one JSON object per line") from None
        q = obj.get("question") or obj.get("Question") if isinstance(obj, dict) else None
        if not isinstance(q, str) or not q.strip():
            raise MedsftError(f"{path} line {number} has no 'question' string", 'write {"question": "..."}')
        questions.append(q)
    if not questions:
        raise MedsftError(f"questions file {path!r} has no questions", 'write one {"question": "..."} per line')
    return questions


def check_output(path: str, overwrite: bool = False) -> Path:
    """Where batch answers go, checked before any model loads: a new file (or, with `overwrite`, one to replace)
    in a writable directory."""
    import os

    out = Path(path).expanduser()
    if out.is_dir():
        raise MedsftError(f"--output {path!r} is a directory", "pass a file path, e.g. answers.jsonl")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise MedsftError(f"--output {path!r} already exists", "pass --overwrite to replace it, or choose a new file")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK | os.X_OK):
        raise MedsftError(f"--output {path!r}: {str(out.parent)!r} is not a writable directory",
                          "create the directory, or choose another path")
    return out


RECORD_KEYS = ("question", "reasoning", "answer", "tokens", "seconds", "well_formed", "stopped")


def jsonl(records: list[dict]) -> str:
    """The batch answers as JSONL, one record per question."""
    return "".join(json.dumps({k: r[k] for k in RECORD_KEYS}) + "\n" for r in records)


def answer_batch(loaded: tuple[Any, Any, Recipe], questions: list[str], settings: Settings,
                 progress: Progress | None = None) -> list[dict]:
    """Every question of a file, answered in batches. `loaded`: (model, tokenizer, recipe) as
    medsft.adapter.load.load_for_inference returns them; `progress` as generate_parallel's."""
    from medsft.evaluation.generate import generate_batch, no_progress

    model, tokenizer, recipe = loaded
    with (progress or no_progress)("answering", len(questions)) as advance:
        return generate_batch(model, tokenizer, questions, settings, recipe.data.system_prompt, recipe.data.format,
                              advance=advance)


def answer_one(loaded: tuple[Any, Any, Recipe], question: str, settings: Settings,
               show: Callable[[str, bool], None]) -> dict:
    """One question, each piece handed to `show(piece, thinking)` as it is generated."""
    from medsft.evaluation.generate import stream_one

    model, tokenizer, recipe = loaded
    return stream_one(model, tokenizer, question, settings, show, recipe.data.system_prompt, recipe.data.format)


def write_answers(records: list[dict], output: Path, overwrite: bool = False) -> None:
    """The answers file, written whole or not at all; without `overwrite`, of two commands writing it one wins."""
    from medsft.io.outputs import atomic_file

    try:
        with atomic_file(output, exclusive=not overwrite) as tmp:
            tmp.write_text(jsonl(records), encoding="utf-8")
    except FileExistsError:
        raise MedsftError(f"--output {str(output)!r} was written by another command while this one generated",
                          "choose a new file for --output, or pass --overwrite") from None
