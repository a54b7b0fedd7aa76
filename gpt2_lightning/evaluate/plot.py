"""``loss.png``: train and val loss against steps (and the reward margin of preference tuning),
tokens seen on a second axis."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import EngFormatter, MaxNLocator  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from gpt2_lightning.export.run import Run  # noqa: E402
from gpt2_lightning.io import atomic_write  # noqa: E402


def read_scalars(tensorboard_dir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of the event files under ``tensorboard_dir``: tag -> [(step, value)]."""
    series: dict[str, dict[int, float]] = {}
    for events in sorted(Path(tensorboard_dir).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            series.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return {tag: sorted(points.items()) for tag, points in series.items()}


def loss_figure(scalars: dict[str, list[tuple[int, float]]]) -> plt.Figure:
    """Train and val loss against steps, and a preference run's reward margins on a second y axis;
    tokens seen on a second x axis on top."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for tag, label, style in (("train_loss", "Training loss", "-"), ("val_loss", "Validation loss", "-.")):
        if tag in scalars:
            steps, values = zip(*scalars[tag])
            ax.plot(steps, values, style, label=label, marker="o" if len(steps) < 30 else None, markersize=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Step")
    ax.set_ylabel("Loss")
    ax.grid(alpha=0.3)
    lines = ax.get_lines()
    margins = [(tag, label) for tag, label in (("train_rewards_margin", "Training reward margin"),
                                                ("val_rewards_margin", "Validation reward margin")) if tag in scalars]
    if margins:  # preference tuning: how far the chosen answers' reward is ahead of the rejected ones'
        right = ax.twinx()
        for (tag, label), style in zip(margins, (":", "--")):
            steps, values = zip(*scalars[tag])
            right.plot(steps, values, style, color="tab:green" if tag.startswith("train") else "tab:red", label=label,
                       marker="o" if len(steps) < 30 else None, markersize=3)
        right.set_ylabel("Reward margin")
        lines = [*lines, *right.get_lines()]
    ax.legend(lines, [line.get_label() for line in lines], loc="upper right")
    if "tokens_seen" in scalars:
        # Tokens seen before each step: none before step 0, a step's own once it is done.
        logged_steps, logged_tokens = zip(*scalars["tokens_seen"])
        steps = np.asarray([0.0, *(s + 1.0 for s in logged_steps)])
        tokens = np.asarray([0.0, *logged_tokens], dtype=float)
        top = ax.secondary_xaxis("top", functions=(lambda s: linear(s, steps, tokens), lambda t: linear(t, tokens, steps)))
        top.xaxis.set_major_formatter(EngFormatter(sep=""))  # 120k, 1.5M: labels that do not run together
        top.xaxis.set_major_locator(MaxNLocator(nbins=6))
        top.set_xlabel("Tokens seen")
    fig.tight_layout()
    return fig


def linear(x, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """``np.interp`` that goes on in a straight line beyond the points (where ``np.interp``
    holds the end values: step 0 would sit left of its tokens), at the mean rate of the points."""
    x = np.asarray(x, dtype=float)
    rate = (fp[-1] - fp[0]) / (xp[-1] - xp[0]) if len(xp) > 1 and xp[-1] != xp[0] else 1.0
    inside = np.interp(x, xp, fp)
    return np.where(x < xp[0], fp[0] + (x - xp[0]) * rate, np.where(x > xp[-1], fp[-1] + (x - xp[-1]) * rate, inside))


def plot_losses(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                scalars: dict[str, list[tuple[int, float]]] | None = None) -> Path:
    """Draw the losses of a run directory (its ``tensorboard/`` events, or ``scalars`` already
    read from them) into ``loss.png``."""
    run = Run(run_dir)
    scalars = scalars if scalars is not None else read_scalars(run.tensorboard)
    if "train_loss" not in scalars:
        raise FileNotFoundError(f"{run.tensorboard}: no train_loss scalars to plot")
    out = Path(out) if out is not None else run.loss_plot
    fig = loss_figure(scalars)
    with atomic_write(out, binary=True) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return out
