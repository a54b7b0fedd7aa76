"""NVIDIA GPUs: bf16 mixed precision where the GPU supports it (else fp16), SDPA's fused
kernels, and the fused ``F.cross_entropy`` (H200, 2048 x 50257 logits: 1.0-1.4 ms against
2.4 ms for the CPU's chunked form)."""

from __future__ import annotations

import torch

from gpt2_lightning.backends.base import Backend
from gpt2_lightning.backends.plan import PRECISION_DTYPES, Workload


class CUDABackend(Backend):
    def plan_training(self, precision: str, width: int, measure: bool) -> tuple[str, Workload, dict[str, str]]:
        if precision == "auto":
            precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return precision, Workload(PRECISION_DTYPES[precision]), {}

    def plan_generation(self, dtype: str, width: int, measure: bool = True) -> tuple[Workload, dict[str, str]]:
        if dtype == "auto":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return Workload(dtype), {}
