"""The execution plan: how a run computes on its device, decided once, written down.

One object says which number format training runs in, which kernels the linear layers, the
attention and the loss use, and which dtype generation runs in, with the measurements behind
each choice. The training job logs it, saves it in the run directory (``plan.json``) and hands
it to every process; ``gpt2 respond / chat / serve`` make and log their own.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from gpt2_lightning.errors import ConfigError
from gpt2_lightning.io import read_json, write_json
from gpt2_lightning.resources import PLAN_FILE

# Lightning's precision -> the dtype the matmuls run in.
PRECISION_DTYPES = {"32-true": "float32", "32": "float32", "bf16-mixed": "bfloat16", "bf16-true": "bfloat16",
                    "16-mixed": "float16"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Workload:
    """How one workload (training, or generation) computes."""

    dtype: str
    """The matmuls' number format: float32, bfloat16 or float16."""
    linears: str = "torch"
    """The linear layers' kernel: ``torch`` (``F.linear``); fp32 on a CPU, ``onednn`` (oneDNN,
    gradients too) or ``onednn-forward`` (oneDNN, the gradients by ``torch.mm``)."""
    attention: str = "sdpa"
    """``sdpa`` (``F.scaled_dot_product_attention``) or ``matmul-short`` (two matmuls on a CPU
    for sequences of up to ``matmul_tokens`` tokens, SDPA beyond)."""
    loss: str = "reference"
    """Training only: ``reference`` (``F.cross_entropy`` over the head's logits) or ``chunked``
    (the CPU's chunked cross-entropy with the head's gradient in vocabulary blocks, a tied
    embedding's gradient added into it row by row)."""
    gelu: str = "tanh"
    """The MLP's activation: ``tanh`` (GPT-2's form) or ``erf`` (the exact GELU, in bf16 / fp16
    only, where it is within the format's rounding of the tanh form: chosen where faster)."""
    matmul_tokens: int = 256
    """The longest sequence ``matmul-short`` computes as two matmuls (measured where it applies)."""

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def describe(self) -> str:
        attention = (f"matmuls up to {self.matmul_tokens} tokens, then sdpa" if self.attention == "matmul-short"
                     else self.attention)
        return f"linears {self.linears}, attention {attention}, GELU {self.gelu}"


@dataclass(frozen=True)
class ExecutionPlan:
    """What a process runs on and how: see the module's docstring."""

    device: str
    """``cpu``, ``cuda``, ``mps``, ..."""
    machine: str
    """The CPU (and GPU), threads and torch version the choices were made for."""
    generate: Workload
    precision: str | None = None
    """The Lightning precision training runs in (None for a plan that only generates)."""
    train: Workload | None = None
    measured: dict[str, str] = field(default_factory=dict)
    """Each measured decision -> the candidates' times and the choice."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ExecutionPlan:
        values = dict(values)
        values["generate"] = Workload(**values["generate"])
        values["train"] = Workload(**values["train"]) if values.get("train") else None
        return cls(**values)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the plan as ``folder/plan.json``; return that path."""
        path = Path(folder) / PLAN_FILE
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExecutionPlan:
        """The plan saved in ``path`` (a ``plan.json`` or the folder holding one)."""
        path = Path(path)
        path = path / PLAN_FILE if path.is_dir() else path
        try:
            return cls.from_dict(read_json(path))
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"{path}: not a readable execution plan ({err})") from None

    def with_generation(self, generate: Workload, measured: dict[str, str]) -> ExecutionPlan:
        return replace(self, generate=generate, measured={**self.measured, **measured})

    def describe(self) -> str:
        """One line for the log."""
        parts = [f"device {self.device}"]
        if self.train is not None:
            parts.append(f"training {self.precision} ({self.train.describe()}, loss {self.train.loss})")
        parts.append(f"generation {self.generate.dtype} ({self.generate.describe()})")
        measured = "; ".join(f"{what}: {result}" for what, result in self.measured.items())
        return ", ".join(parts) + (f"; measured {measured}" if measured else "")
