"""``loss.png``: train and val loss against steps, tokens seen on a second axis."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
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


def plot_losses(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                scalars: dict[str, list[tuple[int, float]]] | None = None) -> Path:
    """Draw the losses of a run directory (its ``tensorboard/`` events, or ``scalars`` already
    read from them) into ``loss.png``."""
    run = Run(run_dir)
    scalars = scalars if scalars is not None else read_scalars(run.tensorboard)
    if "train_loss" not in scalars:
        raise FileNotFoundError(f"{run.tensorboard}: no train_loss scalars to plot")
    out = Path(out) if out is not None else run.loss_plot
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for tag, label, style in (("train_loss", "Training loss", "-"), ("val_loss", "Validation loss", "-.")):
        if tag in scalars:
            steps, values = zip(*scalars[tag])
            ax.plot(steps, values, style, label=label, marker="o" if len(steps) < 30 else None, markersize=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Step")
    ax.set_ylabel("Loss")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    if "tokens_seen" in scalars:  # tokens seen at each step, as a second x axis on top
        steps, tokens = zip(*scalars["tokens_seen"])
        top = ax.secondary_xaxis(
            "top", functions=(lambda s: np.interp(s, steps, tokens), lambda t: np.interp(t, tokens, steps)))
        top.set_xlabel("Tokens seen")
    fig.tight_layout()
    with atomic_write(out, binary=True) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return out
