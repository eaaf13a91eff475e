"""The loss chart of a training job: train and validation loss by step, every point drawn.

A bare matplotlib Figure (Agg canvas, no pyplot), so nothing is registered globally. Steps get whole
numbers on the axis, a single point still shows (as a marker, with a readable label), and the
validation loss, logged far less often than the training loss, is drawn as points joined by a line.
"""
from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

SERIES = (("loss", "train", "#4f46e5"), ("eval_loss", "validation", "#db2777"))


def loss_figure(metrics: list[dict]) -> Figure | None:
    """None until the first loss is logged; `metrics` are the job's metrics.jsonl records."""
    figure = Figure(figsize=(7, 3.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    steps = []
    for key, label, color in SERIES:
        points = [(int(m["step"]), float(m[key])) for m in metrics if key in m and "step" in m]
        if not points:
            continue
        xs, losses = zip(*points)
        axes.plot(xs, losses, marker="o", markersize=4 if len(points) > 30 else 6, label=label, color=color)
        steps += xs
    if not steps:
        return None
    if max(steps) - min(steps) < 2:  # one or two steps: room for whole-number ticks around them
        axes.set_xlim(min(steps) - 1, max(steps) + 1)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
    axes.ticklabel_format(axis="y", useOffset=False)  # plain values on the axis, never "+1.07e1" beside it
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title("Loss")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure
