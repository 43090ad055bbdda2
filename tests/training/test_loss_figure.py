"""loss.png as a paper would show it: the training loss and the eval NLL on axes of their own, learning rate and
tokens/s beside them, optimizer steps on x; drawn the same for 10 steps and for 100,000."""

from __future__ import annotations

import pytest


def records(steps: int, every: int) -> list[dict]:
    out = []
    for step in range(every, steps + 1, every):
        out.append({"step": step, "time": float(step), "loss": 5.0 / step ** 0.1, "mean_token_accuracy": 0.5,
                    "learning_rate": 1e-4 * (1 - step / steps), "grad_norm": 1.0, "num_tokens": 1000.0 * step})
        if step % (every * 4) == 0:
            out.append({"step": step, "time": float(step), "eval_loss": 3.0, "eval_mean_token_accuracy": 0.6})
    return out


@pytest.mark.parametrize("steps, every", [(10, 1), (100_000, 10)])
def test_each_quantity_on_its_own_labelled_axis(steps, every):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medsft.train.progress import loss_figure

    fig = loss_figure(records(steps, every))
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert {"training loss", "evaluation NLL", "learning rate", "throughput"} <= set(panels)
    train_y = {round(y, 6) for y in panels["training loss"].lines[0].get_ydata()}
    eval_y = {round(y, 6) for y in panels["evaluation NLL"].lines[0].get_ydata()}
    assert eval_y == {3.0} and 3.0 not in train_y  # apart: neither axis holds the other quantity
    assert set(panels["throughput"].lines[0].get_ydata()) == {1000.0}  # tokens per second from the counters
    assert all(ax.get_ylabel() for ax in fig.axes)
    assert panels["training loss"].get_xlim()[1] >= steps * 0.99
    markers = panels["training loss"].lines[0].get_marker()
    assert (markers not in ("None", "", None)) == (steps <= 60)  # points for a short run, a line for a long one
    plt.close(fig)
