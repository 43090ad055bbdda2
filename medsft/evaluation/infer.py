"""`medsft infer ADAPTER_DIR`: ask the trained model, one question, a JSONL file, or interactively.

Why: the quickest check that an adapter learned to reason and to stop. The base model is loaded as it
was trained (the adapter's recipe.yaml), `--no-adapter` answers with the base alone for comparison,
and batch mode writes JSONL records (question, reasoning, answer, tokens, seconds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from medsft.errors import MedsftError


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


def check_output(path: str) -> Path:
    """Where batch answers go, checked before any model loads: a new file in a writable directory."""
    import os

    out = Path(path).expanduser()
    if out.is_dir():
        raise MedsftError(f"--output {path!r} is a directory", "pass a file path, e.g. answers.jsonl")
    if out.exists():
        raise MedsftError(f"--output {path!r} already exists", "choose a new file (medsft does not overwrite files "
                          "it did not write)")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK | os.X_OK):
        raise MedsftError(f"--output {path!r}: {str(out.parent)!r} is not a writable directory",
                          "create the directory, or choose another path")
    return out


def run_infer(adapter_dir, *, question=None, questions=None, output=None, use_adapter=True, settings=None) -> list[dict]:
    from medsft.adapter.load import load_for_inference
    from medsft.console import rich_console
    from medsft.evaluation.generate import Settings, generate_batch, stream_one

    settings = settings or Settings()
    model, tokenizer, recipe = load_for_inference(adapter_dir, use_adapter=use_adapter)
    console = rich_console()
    system, fmt = recipe.data.system_prompt, recipe.data.format
    if questions is not None:
        records = generate_batch(model, tokenizer, questions, settings, system, fmt)
        lines = "".join(json.dumps({k: r[k] for k in ("question", "reasoning", "answer", "tokens", "seconds",
                                                      "well_formed", "stopped")}) + "\n" for r in records)
        if not output:
            sys.stdout.write(lines)
            return records
        from medsft.io.outputs import atomic_file

        try:
            with atomic_file(output, exclusive=True) as tmp:  # complete or absent; of two writers, one wins
                tmp.write_text(lines, encoding="utf-8")
        except FileExistsError:
            raise MedsftError(f"--output {str(output)!r} was written by another command while this one generated",
                              "choose a new file for --output") from None
        return records
    records = []
    asks = [question] if question else None
    while True:
        if asks is not None:
            if not asks:
                break
            q = asks.pop(0)
        else:
            try:
                q = console.input("[bold cyan]question>[/bold cyan] ")
            except EOFError:
                break
            if not q.strip():
                break
        r = stream_one(model, tokenizer, q, settings, console, system, fmt)  # the answer, printed once
        rich_console(stderr=True).print(f"({r['tokens']} tokens, {r['seconds']:.1f}s"
                                        f"{'' if r['stopped'] else ', stopped at --max-new-tokens'}"
                                        f"{'' if r['answer'] else '; no answer after the reasoning'})", style="dim")
        records.append(r)
    return records
