"""What a measurement is remembered for: CPUs that share a marketing name but not their speed are told apart."""

import os
import subprocess
import sys

from gpt2_lightning.backends.machine import KERNEL_SETTINGS, cpu_identity, cpu_identity_of, machine

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx fma avx2 bmi2

processor\t: 1
vendor_id\t: AuthenticAMD
"""
ZEN4 = ZEN3.replace("model\t\t: 1", "model\t\t: 17").replace("avx2 bmi2", "avx2 bmi2 avx512f avx512_bf16 avx512vl")
SAPPHIRE_RAPIDS = """vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum
flags\t\t: avx2 fma avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""


def test_cpus_of_one_marketing_name_but_other_vector_units_are_told_apart():
    assert cpu_identity_of(ZEN3, 2) == "AuthenticAMD family 25 model 1, avx2 fma, 2 cores"
    assert cpu_identity_of(ZEN4, 2) == "AuthenticAMD family 25 model 17, avx2 fma avx512f avx512_bf16, 2 cores"
    assert cpu_identity_of(ZEN4, 16) != cpu_identity_of(ZEN4, 2)
    assert cpu_identity_of(SAPPHIRE_RAPIDS, 4) == (
        "GenuineIntel family 6 model 143, avx2 fma avx512f avx512_bf16 avx512_fp16 amx_tile amx_bf16, 4 cores")
    assert cpu_identity_of("processor\t: 0\nflags\t\t: sse2\n", 1).endswith(", no AVX2, 1 core")


def test_this_machines_measurements_are_keyed_by_its_identity():
    assert f"[{cpu_identity()}]" in machine() and "cores" in cpu_identity()


def test_settings_that_cap_the_kernels_are_part_of_the_identity(monkeypatch):
    for name in KERNEL_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    plain = machine()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "")  # set but empty: torch's default, as unset
    assert machine() == plain.replace(f"{cpu_identity()}]", f"{cpu_identity()}, ONEDNN_MAX_CPU_ISA=AVX2]")


def test_a_process_whose_kernels_are_capped_does_not_take_the_uncapped_calibration(tmp_path):
    """ATen's kernels capped as the process starts (``default``: no vector instructions): its plan
    is measured again, not read from the cache the same machine filled without the cap."""
    measure = ("import logging, sys\n"
               "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
               "from gpt2_lightning.backends.cpu.calibrate import gelu_race\n"
               "import torch\n"
               "gelu_race(torch.bfloat16, 64)\n")
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    env["GPT2_LIGHTNING_CACHE"] = str(tmp_path)

    def measured(**settings) -> bool:
        done = subprocess.run([sys.executable, "-c", measure], env={**env, **settings}, capture_output=True,
                              text=True, check=True, timeout=120)
        return "measured the gelu bfloat16 workload" in done.stdout

    assert measured() and not measured()  # measured once, then read back
    assert measured(ATEN_CPU_CAPABILITY="default") and not measured(ATEN_CPU_CAPABILITY="default")
