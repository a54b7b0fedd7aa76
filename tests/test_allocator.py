import os
import subprocess
import sys

import pytest

# Allocates and frees a 64 MB tensor, as a training step does with its activations, and prints
# the page faults 20 such steps cost once the heap has settled (after 10).
CHURN = """
import resource, sys, torch
from gpt2_lightning.backends.cpu.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
for _ in range(10):
    torch.empty(16 << 20).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(16 << 20).fill_(1)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def churn(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", CHURN, mode], env={**clean, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning")
def test_kept_memory_is_reused_without_page_faults():
    applied, kept = churn("keep")
    _, default = churn("default")
    assert applied == "True"
    # 20 x 64 MB is ~330k pages faulted in again by default; kept, the memory is reused.
    assert default > 20 * 16384 / 2
    assert kept < default / 10


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning")
def test_the_users_own_glibc_tuning_is_left_alone():
    applied, faults = churn("keep", MALLOC_TRIM_THRESHOLD_="0")
    assert applied == "False"
    assert faults > 20 * 16384 / 2
