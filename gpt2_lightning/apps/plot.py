"""Plot a run's train and val losses (from its TensorBoard events) into loss.png."""

from __future__ import annotations

import argparse
from pathlib import Path

from gpt2_lightning.evaluate.plot import plot_losses


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run directory (holds tensorboard/)")
    parser.add_argument("--out", type=Path, help="the image file (default: <run_dir>/loss.png)")


def run(args: argparse.Namespace) -> None:
    print(plot_losses(args.run_dir, args.out))
