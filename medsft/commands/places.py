"""Where each command writes, decided in one place.

Why: an adapter (or a merged model) is replaced whole and only while it holds exactly what training wrote
(medsft/io/ownership.py); a report written inside it made the next training refuse. So evaluation results go
into the run the adapter came from (`output.dir/eval/`, the run its marker names), or beside a copied adapter,
or where `--output-dir` says; never inside an adapter or a merged model.
"""

from __future__ import annotations

from pathlib import Path


def run_dir_of(adapter: Path) -> Path | None:
    """The run directory an adapter was trained in, when it is still there (the adapter's marker names it)."""
    from medsft.io.ownership import marker, read_marker

    found = read_marker(adapter) or {}
    run = found.get("run")
    if isinstance(run, str) and run:
        run_dir = Path(run) if Path(run).is_absolute() else (Path.cwd() / run)
        if (marker(run_dir) or {}).get("kind") == "run":
            return run_dir
    return None


def evaluation_dir(adapter: Path, output_dir: str | None) -> Path:
    """`medsft eval`'s results: --output-dir, else `<run>/eval`, else `<adapter>-eval` beside a copied adapter."""
    if output_dir:
        return Path(output_dir).expanduser()
    run = run_dir_of(Path(adapter))
    return run / "eval" if run is not None else Path(adapter).with_name(f"{Path(adapter).name}-eval")


def benchmark_dir(adapter: Path, output_dir: str | None) -> Path:
    """`medsft eval --benchmark`'s report: --output-dir, else `benchmark/` in `evaluation_dir`."""
    return Path(output_dir).expanduser() if output_dir else evaluation_dir(adapter, None) / "benchmark"


def score_dir(predictions: Path, output_dir: str | None) -> Path:
    """`medsft score`'s report: --output-dir, else `PRED-score/` beside the predictions."""
    return Path(output_dir).expanduser() if output_dir else predictions.with_name(f"{predictions.stem}-score")


def held_out_evaluation(adapter: Path) -> dict | None:
    """What `medsft eval` wrote for this adapter (its eval.json in `evaluation_dir`), when it ran: a merged
    model's card shows it."""
    import json

    try:
        found = json.loads((evaluation_dir(Path(adapter), None) / "eval.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None
