"""The CPU backend: the only place that knows a CPU's tricks.

- ``onednn``: fp32 linear layers through oneDNN, their gradients through oneDNN or torch
  (whichever of the three is measured fastest).
- ``calibrate``: which number format, fp32 kernel, attention path and bf16 GELU form are
  fastest here, measured once, cached.
- ``attention``: two matmuls instead of SDPA for sequences as short as that measures faster.
- ``loss``: the chunked fp32 cross-entropy, the LM head's gradient in vocabulary blocks and a tied
  embedding's gradient added into it row by row.
- ``allocator``: glibc told to keep freed memory.
"""

from __future__ import annotations

import functools

import torch.nn.functional as F
from torch import nn

from gpt2_lightning.backends.base import Backend, Kernels
from gpt2_lightning.backends.cpu.attention import short_sequence_attention
from gpt2_lightning.backends.cpu.calibrate import attention_race, dtype_race, gelu_race, onednn_race
from gpt2_lightning.backends.cpu.loss import embedding_rows_into_head_gradient, head_loss, token_losses
from gpt2_lightning.backends.cpu.onednn import LINEAR_GRADIENTS, use_onednn_linears
from gpt2_lightning.backends.plan import DTYPES, PRECISION_DTYPES, Workload


class CPUBackend(Backend):
    def plan_training(self, precision: str, width: int, measure: bool) -> tuple[str, Workload, dict[str, str]]:
        measured: dict[str, str] = {}
        linears = "torch"
        if measure and precision in ("auto", "32-true", "32"):
            linears = self._fp32_linears(width, "train", measured)
        if precision == "auto":
            precision = "32-true"
            if measure:  # fp32 as it would run against bf16 mixed precision
                race = dtype_race("cpu", "train", width, linears)
                measured["training precision"] = race.summary()
                precision = "bf16-mixed" if race.fastest == "bfloat16" else "32-true"
        dtype = PRECISION_DTYPES[precision]
        return precision, self._workload(dtype, linears, width, measure, "training", measured, loss="chunked"), measured

    def plan_generation(self, dtype: str, width: int, measure: bool = True) -> tuple[Workload, dict[str, str]]:
        measured: dict[str, str] = {}
        if not measure:
            return self._workload("float32" if dtype == "auto" else dtype, "torch", width, False, "generation",
                                  measured), measured
        linears = self._fp32_linears(width, "generate", measured) if dtype in ("auto", "float32") else "torch"
        if dtype == "auto":
            race = dtype_race("cpu", "generate", width, linears)
            measured["generation dtype"] = race.summary()
            dtype = race.fastest if race.fastest == "bfloat16" else "float32"
        return self._workload(dtype, linears, width, True, "generation", measured), measured

    @staticmethod
    def _fp32_linears(width: int, workload: str, measured: dict[str, str]) -> str:
        race = onednn_race(width, workload)
        if race is None:
            return "torch"
        measured[f"{'training' if workload == 'train' else 'generation'} fp32 linears"] = race.summary()
        return "torch" if race.fastest == "float32" else race.fastest

    @classmethod
    def _workload(cls, dtype: str, linears: str, width: int, measure: bool, workload: str, measured: dict[str, str],
                  loss: str = "reference") -> Workload:
        """``workload`` (training or generation) in ``dtype``: the attention and GELU measured
        where ``measure``, each measurement's summary added to ``measured``."""
        tokens = cls._matmul_tokens(dtype, width, measure, workload, measured)
        return Workload(dtype, linears if dtype == "float32" else "torch", "matmul-short" if tokens else "sdpa",
                        loss, cls._gelu(dtype, width, measure, workload, measured), matmul_tokens=tokens or 256)

    @staticmethod
    def _matmul_tokens(dtype: str, width: int, measure: bool, workload: str, measured: dict[str, str]) -> int:
        """Up to how many tokens attention runs as two matmuls (0: SDPA throughout); unmeasured,
        256 in bf16 / fp16 and SDPA in fp32, as most machines measured."""
        if not measure:
            return 0 if dtype == "float32" else 256
        tokens, races = attention_race(DTYPES[dtype], width)
        measured[f"{workload} attention"] = "; ".join(race.summary() for race in races)
        return tokens

    @staticmethod
    def _gelu(dtype: str, width: int, measure: bool, workload: str, measured: dict[str, str]) -> str:
        """GPT-2's tanh GELU, or in bf16 / fp16 the exact one where it measures faster."""
        if dtype == "float32" or not measure:
            return "tanh"
        race = gelu_race(DTYPES[dtype], width)
        measured[f"{workload} GELU"] = race.summary()
        return race.fastest

    def prepare(self, model: nn.Module, workload: Workload) -> None:
        if workload.linears in LINEAR_GRADIENTS:
            use_onednn_linears(model, LINEAR_GRADIENTS[workload.linears])
        if workload.loss == "chunked":
            embedding_rows_into_head_gradient(model)

    def kernels(self, workload: Workload) -> Kernels:
        attention = (functools.partial(short_sequence_attention, dtype=workload.torch_dtype,
                                       max_tokens=workload.matmul_tokens) if workload.attention == "matmul-short" else None)
        return Kernels(attention=attention,
                       gelu=F.gelu if workload.gelu == "erf" else None,
                       head_loss=head_loss if workload.loss == "chunked" else None,
                       token_losses=token_losses if workload.loss == "chunked" else None)
