"""What a person reads while training: at 80 columns every figure of the live view carries its label, nothing
wraps, and the training loss and the eval NLL stand on lines of their own; a log file gets each step once."""

from __future__ import annotations

import re
from types import SimpleNamespace

LOGGED = {"loss": 3.97, "mean_token_accuracy": 0.516, "learning_rate": 1.09e-3, "grad_norm": 1.305,
          "tokens/s": 4872.0, "peak RSS": 1.2 * 2**30, "eval_loss": 3.6656, "eval_perplexity": 39.08,
          "eval_mean_token_accuracy": 0.537, "eval_format_compliance": 0.9}
LABELLED = re.compile(r"^[a-z][a-z /]*[a-z] \S+$")  # `name value`


def callback(width: int):
    from rich.console import Console

    from medsft.train.progress import ProgressCallback

    console = Console(record=True, width=width, force_terminal=True, color_system=None)
    cb = ProgressCallback(console)
    cb.last.update(LOGGED)
    return cb, console


def test_the_live_view_labels_every_figure_at_80_columns():
    cb, console = callback(80)
    console.print(cb.render(SimpleNamespace(global_step=40, max_steps=80, epoch=0.5)))
    lines = [line.rstrip() for line in console.export_text().splitlines()][1:]  # below the bar
    assert len(lines) == 2 and all(len(line) <= 80 for line in lines), lines
    train, evaluation = lines
    assert "loss 3.9700" in train and "eval" not in train
    assert evaluation.startswith("eval at step 40") and "eval nll 3.6656" in evaluation and "loss" not in evaluation
    for line in lines:
        assert all(LABELLED.match(segment) for segment in line.split("  ")), line


def test_a_narrow_terminal_leaves_figures_out_whole():
    cb, console = callback(40)
    console.print(cb.render(SimpleNamespace(global_step=40, max_steps=80, epoch=0.5)))
    lines = [line.rstrip() for line in console.export_text().splitlines()][1:]
    assert all(len(line) <= 40 for line in lines) and len(lines) == 2, lines
    for line in lines:
        assert all(LABELLED.match(segment) for segment in line.split("  ")), line
