"""LoRA against full fine-tuning, same precision, same batches, same fused AdamW (over what
trains), one process per comparison:

- seconds per training step (forward + backward + AdamW), gpt2-small shape, batch 8 x 256;
- peak memory of two training steps, gpt2-small and gpt2-medium, each in a fresh process;
- the size of ``last.ckpt`` after one step of ``train.py`` on the sample data, gpt2-small;
- ``--xl``: two steps of ``train.py model=gpt2-xl adapter=lora`` on the sample data, and
  that process's peak resident memory (the base weights: a random gpt2-xl written to disk).

LoRA as ``adapter=lora`` sets it (``conf/adapter/lora.yaml``: r=16, alpha=16, no dropout, on
qkv, out_proj, fc and proj); ``--dropout 0.05`` adds dropout on the adapters' input. Random
weights of the real shapes.

    python bench/lora.py [--precision fp32 bf16] [--repeats 5] [--xl]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import safetensors.torch
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt, machine, timeit  # noqa: E402

from gpt2_lightning.backends.cpu.allocator import keep_freed_memory  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig, GPTModel  # noqa: E402
from gpt2_lightning.model.lora import LoRAConfig, add_lora  # noqa: E402
from gpt2_lightning.model.pretrained import to_hf_state_dict  # noqa: E402
from gpt2_lightning.train.loss import masked_lm_loss  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def lora_config(dropout: float | None = None) -> LoRAConfig:
    """The settings of ``adapter=lora``, with another dropout if given."""
    settings = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "adapter" / "lora.yaml"))
    settings.pop("name")
    return LoRAConfig(**{**settings, **({} if dropout is None else {"dropout": dropout})})


def training_setup(name: str, lora: LoRAConfig | None):
    torch.manual_seed(0)
    model = GPTModel(GPTConfig.from_name(name))
    if lora is not None:
        add_lora(model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model.train(), torch.optim.AdamW(trainable, lr=1e-4, fused=True), sum(p.numel() for p in trainable)


def step_fn(model, optimizer, idx, precision: str):
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    targets = torch.roll(idx, -1, 1)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss, _ = masked_lm_loss(model, idx, targets)
        loss.backward()
        optimizer.step()
    return step


def step_times(precisions: list[str], repeats: int, lora: LoRAConfig) -> None:
    idx = torch.randint(0, 50257, (8, 256), generator=torch.Generator().manual_seed(0))
    for precision in precisions:
        stats = {}
        for kind in ("full", "lora"):
            model, optimizer, trainable = training_setup("gpt2-small", lora if kind == "lora" else None)
            stats[kind] = timeit(step_fn(model, optimizer, idx, precision), repeats, warmup=2)
            print(f"  gpt2-small {precision} {kind}: {fmt(stats[kind])} per step, {trainable / 1e6:.2f}M trainable")
            del model, optimizer
        print(f"  -> LoRA step {stats['full']['median'] / stats['lora']['median']:.2f}x faster ({precision})")


def peak_memory(name: str, kind: str, precision: str, dropout: float) -> float:
    """GiB at the peak of two training steps, in this process."""
    keep_freed_memory()
    model, optimizer, _ = training_setup(name, lora_config(dropout) if kind == "lora" else None)
    step = step_fn(model, optimizer, torch.randint(0, 50257, (8, 256)), precision)
    step()
    step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def train_py(*overrides: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float, float]:
    """``train.py`` in a child process: its result, its wall time and its peak RSS in GiB (the
    largest child this process has waited for so far)."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *overrides], cwd=cwd, capture_output=True,
                            text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    return result, elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2 ** 20


def random_base(name: str, folder: Path) -> Path:
    """Random weights of GPT-2 size ``name`` saved as Hugging Face saves GPT-2."""
    torch.manual_seed(0)
    state = to_hf_state_dict(GPTModel(GPTConfig.from_name(name)))
    safetensors.torch.save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


QUICK_RUN = ("data=sample", "trainer.max_steps=1", "test=false", "respond=false", "export=false", "plot=false",
             "callbacks.progress_bar.refresh_rate=0", "~callbacks.response_sample", "trainer.enable_model_summary=false")


def checkpoint_sizes(work: Path) -> None:
    base = random_base("gpt2-small", work)
    sizes = {}
    for kind in ("none", "lora"):
        train_py("model=gpt2-small", f"model.weights={base}", f"adapter={kind}", *QUICK_RUN,
                 f"hydra.run.dir={work / kind}", cwd=work)
        sizes[kind] = (work / kind / "checkpoints" / "last.ckpt").stat().st_size
        print(f"  last.ckpt, gpt2-small, adapter={kind}: {sizes[kind] / 2 ** 20:.1f} MiB")
    print(f"  -> LoRA's is {100 * sizes['lora'] / sizes['none']:.1f}% of the full run's")


def xl_run(work: Path) -> None:
    base = random_base("gpt2-xl", work)
    _, elapsed, peak = train_py("model=gpt2-xl", f"model.weights={base}", "adapter=lora", *QUICK_RUN,
                                "trainer.max_steps=2", f"hydra.run.dir={work / 'xl'}", cwd=work)
    log = (work / "xl" / "train.log").read_text()
    print(f"  gpt2-xl, adapter=lora, 2 steps on the sample data: {elapsed:.0f} s in all, peak RSS {peak:.2f} GiB")
    print("  " + next(line for line in log.splitlines() if "trainable" in line).split(" - ")[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dropout", type=float, help="LoRA dropout instead of the config's")
    parser.add_argument("--xl", action="store_true", help="also train gpt2-xl with LoRA (writes 6.2 GB of weights)")
    parser.add_argument("--one", nargs=3, metavar=("NAME", "KIND", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    lora = lora_config(args.dropout)
    if args.one:
        print(json.dumps(peak_memory(*args.one, lora.dropout)))
        return
    print(machine())
    print(f"LoRA: {lora}")
    print("training step:")
    step_times(args.precision, args.repeats, lora)
    print("peak memory of two training steps, batch 8 x 256:")
    for precision in args.precision:
        for name in ("gpt2-small", "gpt2-medium"):
            peaks = {kind: float(subprocess.run([sys.executable, __file__, "--one", name, kind, precision,
                                                 "--dropout", str(lora.dropout)],
                                                capture_output=True, text=True, check=True).stdout)
                     for kind in ("full", "lora")}
            print(f"  {name} {precision}: full {peaks['full']:.2f} GiB, LoRA {peaks['lora']:.2f} GiB "
                  f"({peaks['lora'] / peaks['full']:.2f}x)")
    with tempfile.TemporaryDirectory() as work:
        print("checkpoint size:")
        checkpoint_sizes(Path(work))
    if args.xl:
        with tempfile.TemporaryDirectory() as work:
            xl_run(Path(work))


if __name__ == "__main__":
    main()
