"""Training progress a person can read, and records they can look at later.

Why: transformers' tqdm bar plus printed dicts is unreadable in a Slurm log and hides what matters for
QLoRA. On a terminal, the main process shows a rich live view; elsewhere (log files) one plain line per
logging step, with no control codes. Because the DFT loss can rise while the model improves, token
accuracy and eval NLL/perplexity (medsft evaluates with the NLL loss whatever the training loss) are
shown beside it. Every log event also goes to `metrics.jsonl`, and `loss.png` is drawn at the end.
Other ranks print and write nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from medsft.console import is_main, rich_console

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text
    from transformers import TrainerControl, TrainerState, TrainingArguments


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return str(n)


def peak_memory() -> tuple[str, float]:
    """(label, bytes): peak CUDA memory of this process, or its peak RSS on CPU."""
    import torch

    if torch.cuda.is_available():
        return "peak mem", float(torch.cuda.max_memory_allocated())
    import resource

    return "peak RSS", float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


EVAL_SHOWN = {"eval_loss": ("eval nll", "{:.4f}"), "eval_perplexity": ("ppl", "{:.2f}"),
              "eval_mean_token_accuracy": ("acc", "{:.3f}"), "eval_format_compliance": ("format", "{:.2f}")}


class ProgressCallback(TrainerCallback):
    """Rich view on a terminal, plain lines otherwise; main process only."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or rich_console()
        self.live: Live | None = None
        self.last: dict[str, float] = {}
        self.start: float | None = None
        self.prev_tokens: float | None = None
        self.prev_time: float | None = None

    # --- state
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        if not is_main():
            return
        self.start = time.monotonic()
        self.first_step = state.global_step
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self.render(state), console=self.console, refresh_per_second=4, transient=False)
            self.live.start()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        if self.live is not None:
            self.live.update(self.render(state))

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not is_main() or not logs:
            return
        now = time.monotonic()
        if "num_tokens" in logs and "loss" in logs:
            tokens = float(logs["num_tokens"])
            if self.prev_tokens is not None and self.prev_time is not None and now > self.prev_time \
                    and tokens >= self.prev_tokens:
                self.last["tokens/s"] = (tokens - self.prev_tokens) / (now - self.prev_time)
            self.prev_tokens, self.prev_time = tokens, now
        for key in ("loss", "eval_loss", "mean_token_accuracy", "eval_mean_token_accuracy", "learning_rate",
                    "grad_norm", "eval_perplexity", "eval_format_compliance"):
            if key in logs:
                self.last[key] = float(logs[key])
        label, peak = peak_memory()
        self.last[label] = peak
        if self.live is not None:
            self.live.update(self.render(state))
        elif "loss" in logs:  # a log file: each step once; an evaluation on a line of its own
            self.console.print(self.line(self.train_fields(state)), markup=False, highlight=False, soft_wrap=True)
        elif any(key in logs for key in EVAL_SHOWN):  # what this evaluation logged, not an earlier one's
            self.console.print(self.line(self.eval_fields(state, only=logs)), markup=False, highlight=False,
                               soft_wrap=True)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self.live is not None:
            self.live.update(self.render(state))
            self.live.stop()
            self.live = None

    # --- rendering
    def eta(self, state: TrainerState) -> str:
        done = state.global_step - getattr(self, "first_step", 0)
        if not self.start or done <= 0 or not state.max_steps:
            return "?"
        per_step = (time.monotonic() - self.start) / done
        return fmt_duration(per_step * (state.max_steps - state.global_step))

    def pairs(self, shown: dict[str, tuple[str, str]]) -> list[tuple[str, str]]:
        """(label, formatted value) for each of `shown` ({key: (label, format)}) that has been logged."""
        return [(label, pattern.format(self.last[key])) for key, (label, pattern) in shown.items() if key in self.last]

    def train_fields(self, state: TrainerState) -> list[tuple[str, str]]:
        out = [("step", f"{state.global_step}/{state.max_steps}"), ("epoch", f"{state.epoch or 0:.2f}"),
               ("eta", self.eta(state))]
        out += self.pairs({"loss": ("loss", "{:.4f}"), "mean_token_accuracy": ("acc", "{:.3f}"),
                           "learning_rate": ("lr", "{:.2e}"), "grad_norm": ("grad norm", "{:.3f}"),
                           "tokens/s": ("tok/s", "{:,.0f}")})
        for label in ("peak mem", "peak RSS"):
            if label in self.last:
                out.append((label, human_bytes(self.last[label])))
        return out

    def eval_fields(self, state: TrainerState, only: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
        shown = self.pairs({k: v for k, v in EVAL_SHOWN.items() if only is None or k in only})
        return [("eval at step", str(state.global_step)), *shown] if shown else []

    @staticmethod
    def line(fields: list[tuple[str, str]]) -> str:
        return " | ".join(f"{k} {val}" for k, val in fields)

    def render(self, state: TrainerState) -> Table:
        """The live view: a bar, the training figures, then the last evaluation's, each figure labelled and each
        line cut to the terminal's width (what does not fit is left out whole, never wrapped)."""
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        width = max(20, self.console.width)

        def fitted(fields: list[tuple[str, str]]) -> Text:
            text = Text(no_wrap=True, overflow="crop")
            for i, (label, value) in enumerate(fields):
                piece = ("  " if i else "") + f"{label} {value}"
                if len(text) + len(piece) > width:
                    break
                text.append(("  " if i else "") + label + " ", style="dim")
                text.append(value, style="bold")
            return text

        view = Table.grid()
        view.add_column(no_wrap=True, overflow="crop", max_width=width)
        view.add_row(ProgressBar(total=max(state.max_steps or 1, 1), completed=state.global_step, width=width))
        view.add_row(fitted(self.train_fields(state)))
        if self.eval_fields(state):
            view.add_row(fitted(self.eval_fields(state)))
        return view


class MetricsFileCallback(TrainerCallback):
    """Appends every log event to <output_dir>/metrics.jsonl and draws loss.png at the end."""

    def __init__(self, output_dir: str) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not is_main() or not logs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"step": state.global_step, "epoch": state.epoch, "time": time.time(), **logs}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if is_main() and self.path.exists():
            plot_losses(self.path, self.path.with_name("loss.png"))


class IdentityCallback(TrainerCallback):
    """Writes the run's identity into every checkpoint it saves, so a resume can tell a checkpoint of another
    recipe from its own (medsft/io/checkpoints.py)."""

    def __init__(self, identity: dict) -> None:
        self.identity = identity

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        from medsft.io.checkpoints import IDENTITY
        from medsft.io.outputs import write_json

        # TrainingArguments annotates output_dir `str | None`; its __post_init__ always sets one
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"  # type: ignore[arg-type]
        if is_main() and checkpoint.is_dir():
            write_json(checkpoint / IDENTITY, self.identity)


class StartedOverCallback(TrainerCallback):
    """The set-aside run (`start_over`) goes once this run has a complete checkpoint of its own."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        from medsft.io.checkpoints import discard_aside, is_complete

        if is_main() and is_complete(self.out / f"checkpoint-{state.global_step}"):
            discard_aside(self.out)


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_losses(metrics_path: Path, png_path: Path) -> None:
    """loss.png from metrics.jsonl (`loss_figure`); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medsft.io.outputs import atomic_file

    fig = loss_figure(read_metrics(metrics_path))
    with atomic_file(png_path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


PANELS = (  # (title, y label, the records' series)
    ("training loss", "loss (the recipe's loss_type)", "loss"),
    ("evaluation NLL", "NLL per completion token", "eval_loss"),
    ("token accuracy", "accuracy", "mean_token_accuracy"),
    ("learning rate", "learning rate", "learning_rate"),
    ("throughput", "tokens / s", "tokens_per_second"),
    ("gradient norm", "‖g‖ before clipping", "grad_norm"),
)


def loss_figure(records: list[dict]) -> Figure:
    """Six panels a paper would show, each quantity on its own labelled axis against the optimizer step: the
    training loss (DFT's can rise while the model improves), the eval NLL apart from it, token accuracy (train and
    eval), learning rate, tokens per second and the gradient norm. Markers only where there are few points, so
    10 steps and 100,000 read alike."""
    import matplotlib.pyplot as plt

    train = [r for r in records if "loss" in r and "train_runtime" not in r]
    series = {key: [(r["step"], r[key]) for r in train if isinstance(r.get(key), (int, float))]
              for key in ("loss", "mean_token_accuracy", "learning_rate", "grad_norm")}
    series["eval_loss"] = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    eval_acc = [(r["step"], r["eval_mean_token_accuracy"]) for r in records if "eval_mean_token_accuracy" in r]
    counted = [r for r in train if isinstance(r.get("num_tokens"), (int, float)) and "time" in r]
    series["tokens_per_second"] = [(b["step"], (b["num_tokens"] - a["num_tokens"]) / (b["time"] - a["time"]))
                                   for a, b in zip(counted, counted[1:]) if b["time"] > a["time"]]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), sharex=True)
    for ax, (title, ylabel, key) in zip(axes.flat, PANELS):
        points = series[key]
        style = "o-" if len(points) <= 60 else "-"
        if points:
            ax.plot(*zip(*points), style, markersize=3, lw=1.2, color="tab:blue",
                    label="train" if key == "mean_token_accuracy" else None)
        if key == "mean_token_accuracy" and eval_acc:
            ax.plot(*zip(*eval_acc), "s-" if len(eval_acc) <= 60 else "-", markersize=3, color="tab:orange",
                    label="eval")
            ax.legend(fontsize=8)
        if key == "eval_loss" and points:
            ax.lines[-1].set_color("tab:orange")
        if not points and not (key == "mean_token_accuracy" and eval_acc):
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("optimizer step")
    fig.tight_layout()
    return fig
