"""Seconds the execution plan spends measuring on a machine it has not seen (an empty cache):
``training_plan(..., "auto")`` (the fp32 kernel, fp32 against bf16, the same for generation),
each width in a fresh process, since a process remembers what it timed.

    python bench/calibration.py [--widths 768 1024 64]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from gpt2_lightning.backends.machine import machine

MEASURE = """
import time
from gpt2_lightning.backends import training_plan
start = time.perf_counter()
plan = training_plan("cpu", "auto", width={width})
print(f"width {width}: {{time.perf_counter() - start:.2f}} s; " + "; ".join(f"{{k}}: {{v}}" for k, v in plan.measured.items()))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--widths", type=int, nargs="+", default=[768, 1024, 64])
    args = parser.parse_args()
    print(machine())
    for width in args.widths:
        with tempfile.TemporaryDirectory() as cache:
            subprocess.run([sys.executable, "-c", MEASURE.format(width=width)], check=True,
                           env={**os.environ, "GPT2_LIGHTNING_CACHE": cache})


if __name__ == "__main__":
    main()
