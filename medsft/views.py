"""How medsft shows what the domain returns: rich tables and lines for a preflight, an evaluation and a
benchmark report. Used by the commands and by training; the domain packages themselves never print.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Task
    from rich.text import Text

    from medsft.evaluation.report import Report
    from medsft.memory.micro_batch import BatchChoice
    from medsft.memory.preflight import Preflight

GiB = 2**30


@contextmanager
def item_progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on the main rank's stderr (items done, items/s, ETA); yields `advance(n)`. The
    `progress` the commands hand to generation (medsft/evaluation/generate.py)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    from medsft.console import rich_console

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(f"{task.speed:.2f} items/s" if task.speed else "– items/s")

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        console=rich_console(stderr=True))
    task = progress.add_task(label, total=total)
    progress.start()
    try:
        yield lambda n: progress.advance(task, n)
    finally:
        progress.stop()


def show_preflight(report: Preflight, batch: BatchChoice | None = None, console: Console | None = None) -> None:
    """The memory table, the micro-batch rows (`batch`: how the run chose its micro-batch), the verdict and,
    when it won't fit, what to change."""
    from rich.table import Table

    from medsft.console import rich_console

    console = console or rich_console()
    est, s = report.estimate, report.setup
    console.print(f"architecture: {report.model} from {report.source}", markup=False, highlight=False)
    console.print(f"estimated with {report.attention}", markup=False, highlight=False, soft_wrap=True)
    table = Table(title=f"memory per device: {report.model} · {report.launch} · "
                        f"micro-batch {s.micro_batch} × {s.max_length} tokens")
    justify: Literal["left", "right"]
    for col, justify in (("term", "left"), ("GiB", "right"), ("how", "left")):
        table.add_column(col, justify=justify)
    for name, nbytes, how in est.persistent:
        table.add_row(name, f"{nbytes / GiB:.2f}", how)
    peak = est.peak_phase
    for phase in est.phases:
        mark = " (peak)" if phase == peak else ""
        table.add_row(f"[bold]{phase}{mark}[/bold]" if mark else phase, f"{est.phase_bytes(phase) / GiB:.2f}",
                      " + ".join(f"{n} {b / GiB:.2f}" for n, b, _ in est.phases[phase] if b), end_section=False)
    table.add_row("allocated (persistent + peak phase)", f"{est.allocated / GiB:.2f}",
                  "comparable with torch.cuda.max_memory_allocated")
    table.add_row("runtime overhead", f"{est.overhead / GiB:.2f}", "CUDA context + 10% allocator fragmentation")
    table.add_row("[bold]total[/bold]", f"[bold]{est.total / GiB:.2f}[/bold]",
                  f"device: {report.device / GiB:.1f} GiB {report.where}")
    console.print(table)
    show_batch(console, batch)
    style = {"fits": "green", "tight": "yellow", "won't fit": "red"}[report.verdict]
    name, nbytes = est.dominant()
    console.print(f"verdict: [{style}]{report.verdict}[/{style}] ({est.total / GiB:.1f} of {report.device / GiB:.1f} "
                  f"GiB per device; {report.launch}); largest term: {name} ({nbytes / GiB:.2f} GiB, {est.peak_phase})",
                  soft_wrap=True)
    for label, overrides, total in report.tips:
        console.print(f"  → {label}: {' '.join('--set ' + o if '=' in o else o for o in overrides)} "
                      f"({total / GiB:.1f} GiB)", soft_wrap=True)
    if report.verdict == "won't fit" and not report.tips:
        console.print("  → no single change fits: use more GPUs with ZeRO-3 / FSDP2, or a smaller model")


def show_batch(console: Console, choice: BatchChoice | None) -> None:
    """The micro-batch rows: what was chosen and why, why the next size would not fit, the accumulation
    (medsft/memory/micro_batch.py decides; this only shows it)."""
    if choice is None:
        return
    procs = f"{choice.world} process{'es' if choice.world > 1 else ''}"
    console.print(f"micro-batch: {choice.micro_batch} ({'auto: ' if choice.auto else ''}{choice.how}"
                  + (f"; estimated {choice.total / GiB:.1f} GiB" if choice.total is not None else "") + ")",
                  markup=False, highlight=False, soft_wrap=True)
    if choice.next_size is not None:
        assert choice.next_total is not None and choice.device is not None  # decided together (micro_batch.decide)
        console.print(f"  next size {choice.next_size} would not fit: {choice.next_total / GiB:.1f} GiB estimated, "
                      f"above 85% of {choice.device / GiB:.1f} GiB", markup=False, highlight=False, soft_wrap=True)
    elif choice.total is not None:
        console.print("  next size: none larger is needed (no accumulation left to trade)", markup=False,
                      highlight=False, soft_wrap=True)
    console.print(f"  gradient accumulation {choice.grad_accum}: {choice.micro_batch} × {choice.grad_accum} × {procs}"
                  f" = {choice.global_batch} rows per optimizer step ({choice.global_from})", markup=False,
                  highlight=False, soft_wrap=True)


def show_benchmark(report: Report, console: Console | None = None) -> None:
    """The accuracy table of a benchmark report (medsft/evaluation/report.py Report), the published figures beside
    it, a line per model on what went unanswered, and where the report was written."""
    from rich.table import Table

    from medsft.console import rich_console
    from medsft.evaluation.report import PUBLISHED, pct

    results, published = report.results, report.published

    names = list(results)
    first = results[names[0]]
    settings = first.get("settings", {})
    how = "greedy" if settings.get("do_sample") is False else (
        f"T={settings['temperature']}, top-p={settings['top_p']}" if "temperature" in settings else "as generated")
    table = Table(title=f"accuracy % ± standard error: first answer statement after the reasoning ({how})")
    table.add_column("source", no_wrap=True)
    table.add_column("n", justify="right")
    for name in names:
        table.add_column(name, justify="right", no_wrap=True)
    both = "adapter" in results and "base" in results
    if both:
        table.add_column("Δ", justify="right")
    table.add_column("no answer", justify="right")
    table.add_column("text", justify="right")
    table.add_column("chance", justify="right")
    rows = [(s, {n: results[n]["by_source"][s] for n in names}) for s in first["by_source"]]
    rows.append(("overall", {n: results[n]["overall"] for n in names}))
    for source, buckets in rows:
        b0 = buckets[names[0]]
        cells = [f"{pct(b['accuracy'])}±{pct(b['stderr'])}" for b in buckets.values()]
        if both:
            cells.append(f"{100 * (buckets['adapter']['accuracy'] - buckets['base']['accuracy']):+.1f}")
        cells.append("/".join(str(b["no_answer"]) for b in buckets.values()))
        cells.append("/".join(str(b["text_fallback"]) for b in buckets.values()))
        cells.append(pct(b0["chance"]))
        table.add_row(source, str(b0["n"]), *cells, end_section=source == rows[-2][0])
    console = console or rich_console()
    console.print(table)
    if published:
        ref = Table(title=f"published figures beside ours — {PUBLISHED['citation']}: other models and their "
                          "scorer, not measured here")
        ref.add_column("model")
        for source, p in published.items():
            ref.add_column(f"{source}\n({p['benchmark']})", justify="right")
        for name in names:
            ref.add_row(f"this run: {name}", *[pct(results[name]["by_source"][s]["accuracy"]) for s in published])
        for model in PUBLISHED["models"]:
            ref.add_row(f"published: {model}", *[pct(published[s]["models"][model]) for s in published])
        console.print(ref)
    for name in names:
        b = results[name]["overall"]
        hit = (results[name].get("generation") or {}).get("hit_max_new_tokens")
        unclosed = ""
        if b["unclosed_reasoning"]:  # the hint only where more tokens could have closed it
            unclosed = (f" ({b['unclosed_reasoning']} ended inside their reasoning"
                        f"{': raise --max-new-tokens' if hit else ''})")
        console.print(f"{name}: {b['no_answer']} of {b['generations']} generations had no answer{unclosed}, "
                      f"{b['text_fallback']} were read from an option's text; HuatuoGPT-o1's scorer (best of first and "
                      f"last match) would report {pct(b['best_of_first_last'])}%", markup=False, highlight=False,
                      soft_wrap=True)
    console.print(f"benchmark report written to {report.out}/ (benchmark.json, {', '.join(report.files)}, "
                  "accuracy-*.png)", markup=False, highlight=False, soft_wrap=True)


def show_eval(results: dict[str, Any], console: Console | None = None) -> None:
    """The held-out evaluation (medsft/evaluation/evaluate.py run_eval): adapter, base and their difference."""
    from rich.table import Table

    from medsft.console import rich_console

    rows, questions, items = results["test_rows"], results["generated"], results["mc_items"]
    table = Table(title=f"evaluation on {rows} test rows ({questions} generated, {items} MC items)")
    table.add_column("metric")
    for name in ("adapter", "base", "delta"):
        if name in results:
            table.add_column(name, justify="right")
    for section, vals in results["adapter"].items():
        for key in vals:
            if key in ("n", "tokens"):
                continue
            cells = [f"{results[n][section].get(key, float('nan')):.3f}" for n in ("adapter", "base", "delta")
                     if n in results]
            table.add_row(f"{section}: {key}", *cells)
    (console or rich_console()).print(table)
