"""DPO steps, ours against Hugging Face TRL's ``DPOTrainer``, side by side in one process: the
same random weights (gpt2-small's shape unless told), the same preference records in the same
batches (B pairs, chosen and rejected scored in one forward), beta 0.1, sigmoid loss, summed
log-probabilities, fused AdamW at lr 5e-6, the same precision, the reference's log-probabilities
precomputed on both sides. Ours computes as ``PreferenceTuner`` trains (the execution plan's
kernels, ``sequence_logprobs`` on the loss's fast path); TRL's side is ``DPOTrainer.compute_loss``
on its own collated batches. Then the peak memory of one DPO step against one SFT step of the same
2B sequences (ours, each in a fresh process: its peak resident set size, VmHWM).

    python bench/dpo.py [--data FILE] [--model gpt2-small] [--batch 8] [--steps 8] [--precision fp32 bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, model_pair  # noqa: E402

from gpt2_lightning.backends import ExecutionPlan, prepare_for_training, training_plan  # noqa: E402
from gpt2_lightning.backends.cpu.allocator import keep_freed_memory  # noqa: E402
from gpt2_lightning.data.preference import PreferenceCollator, PreferenceDataset  # noqa: E402
from gpt2_lightning.data.prompts import get_style  # noqa: E402
from gpt2_lightning.data.records import load_records  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig  # noqa: E402
from gpt2_lightning.train.loss import masked_lm_loss  # noqa: E402
from gpt2_lightning.train.preference import answer_logprobs, preference_loss  # noqa: E402
from gpt2_lightning.train.reference import compute_reference  # noqa: E402

PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed"}
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "instruction-data-with-preference.json"


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def ours(model, records, batch: int, precision: str, plan: ExecutionPlan):
    """Our side: ``(loss(batch), batches)``, the batches with the reference's log-probabilities."""
    kernels = prepare_for_training(model, plan)
    logprobs = functools.partial(answer_logprobs, token_losses=kernels.token_losses)
    dataset = PreferenceDataset(records, "alpaca")
    dataset.reference = compute_reference({"train": dataset}, lambda x, y: logprobs(model.eval(), x, y)[0], batch,
                                          torch.device("cpu"), lambda: autocast(precision))["train"]
    model.train()
    collate = PreferenceCollator()
    batches = [collate([dataset[i] for i in range(start, start + batch)]) for start in range(0, len(dataset), batch)]

    def loss(b):
        sums, _ = logprobs(model, b["input_ids"], b["targets"])
        pairs = len(sums) // 2
        reference = b["reference_logps"]
        return preference_loss(sums[:pairs], sums[pairs:], reference[:pairs], reference[pairs:], beta=0.1)[0]
    return loss, batches


def trl(model, records, batch: int, precision: str, folder: Path):
    """TRL's side: ``DPOTrainer.compute_loss`` over its batches, with its precomputed reference."""
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from transformers import GPT2TokenizerFast
    from trl import DPOConfig, DPOTrainer

    from gpt2_lightning.export.hf import write_tokenizer

    style = get_style("alpaca")
    write_tokenizer(folder, style, 1024)
    tokenizer = GPT2TokenizerFast.from_pretrained(folder)
    data = Dataset.from_dict({"prompt": [style.prompt(r) for r in records], "chosen": [r["chosen"] for r in records],
                              "rejected": [r["rejected"] for r in records]})
    config = DPOConfig(output_dir=str(folder / "trainer"), beta=0.1, loss_type="sigmoid", learning_rate=5e-6,
                       per_device_train_batch_size=batch, precompute_ref_log_probs=True, precompute_ref_batch_size=batch,
                       bf16=precision == "bf16", use_cpu=True, report_to="none", disable_tqdm=True, max_length=1024,
                       optim="adamw_torch_fused", seed=123)
    trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    loader = DataLoader(trainer.train_dataset, batch_size=batch, collate_fn=trainer.data_collator, shuffle=False)
    batches = list(loader)
    model.train()
    return (lambda b: trainer.compute_loss(model, b)), batches


def timed(loss, batches, model, precision: str, repeats: int) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-6, weight_decay=0.01,
                                  fused=True)
    seconds = []
    for repeat in range(repeats + 1):  # the first pass warms up
        start = time.perf_counter()
        for b in batches:
            optimizer.zero_grad(set_to_none=True)
            with autocast(precision):
                value = loss(b)
            value.backward()
            optimizer.step()
        if repeat:
            seconds.append(time.perf_counter() - start)
    return seconds


def peak(kind: str, name: str, batch: int, precision: str, data: Path, plan: Path) -> float:
    """GiB at the peak of two steps of ``kind`` (``dpo``, ``sft``), ours, in this process."""
    keep_freed_memory()
    model, hf = model_pair(GPTConfig.from_name(name))
    del hf
    loss, batches = ours(model, load_records(data)[:2 * batch], batch, precision, ExecutionPlan.load(plan))
    if kind == "sft":  # the same 2B sequences, scored as SFT scores them
        loss = lambda b: masked_lm_loss(model, b["input_ids"], b["targets"])[0]  # noqa: E731
    timed(loss, batches[:1], model, precision, repeats=1)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent (this benchmark, models loaded) across exec.
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 2 ** 20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--model", default="gpt2-small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--peak", nargs=3, metavar=("KIND", "PRECISION", "PLAN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak:
        print(json.dumps(peak(args.peak[0], args.model, args.batch, args.peak[1], args.data, Path(args.peak[2]))))
        return
    records = load_records(args.data)[:args.batch * args.steps]
    print(machine())
    print(f"{args.model}, {args.steps} steps of {args.batch} pairs from {args.data.name}, beta 0.1, fused AdamW")
    for precision in args.precision:
        mine, hf = model_pair(GPTConfig.from_name(args.model))
        plan = training_plan(torch.device("cpu"), PRECISIONS[precision], mine.cfg.emb_dim)
        with tempfile.TemporaryDirectory() as folder:
            sides = {"ours": (ours(mine, records, args.batch, precision, plan), mine),
                     "TRL": (trl(hf, records, args.batch, precision, Path(folder)), hf)}
            seconds = {name: timed(*side, model, precision, args.repeats) for name, (side, model) in sides.items()}
            rate = {name: args.steps / min(s) for name, s in seconds.items()}
            print(f"{precision}: ours {rate['ours']:.3f} steps/s, TRL {rate['TRL']:.3f} steps/s: "
                  f"{rate['ours'] / rate['TRL']:.2f}x ({plan.describe()})")
            saved = plan.save(Path(folder))
            peaks = {kind: float(subprocess.run(
                [sys.executable, __file__, "--peak", kind, precision, str(saved), "--model", args.model,
                 "--batch", str(args.batch), "--data", str(args.data)],
                capture_output=True, text=True, check=True).stdout) for kind in ("dpo", "sft")}
        print(f"{precision}: peak memory of a step, DPO {peaks['dpo']:.2f} GiB, SFT of the same {2 * args.batch} "
              f"sequences {peaks['sft']:.2f} GiB: {peaks['dpo'] / peaks['sft']:.2f}x")


if __name__ == "__main__":
    main()
