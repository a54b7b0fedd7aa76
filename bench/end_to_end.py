"""End to end: fine-tune the gpt2-small shape (random init) for 2 epochs on the seed data with
validation, through ``train.py`` with its defaults (whole process: start-up, precision chosen
by measurement, validations, checkpoints), against
  trl       Hugging Face TRL's ``SFTTrainer`` on ``GPT2LMHeadModel`` (``bench/sft_trl.py``): the
            same split, batch, epochs, optimizer, validation cadence and precision, whole process
  baseline  a plain PyTorch loop of the reference's kind (batch 8 padded to the longest, fp32,
            torch AdamW defaults, evaluation on 5 train + 5 val batches every 5 steps, a sample
            generation after each epoch, no Lightning)
All see the same 935 examples per epoch. Every final model is scored by the same function:
the baseline's fp32 mean loss over the whole val split (for ``train.py``, its ``last.ckpt``).

    python bench/end_to_end.py [--data ../shared/data/instruction-data.json] [--epochs 2]
                               [--sides ours trl baseline] [--train-overrides KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SEED_DATA, machine  # noqa: E402

from gpt2_lightning.backends import training_device, training_plan  # noqa: E402
from gpt2_lightning.data.prompts import format_example, format_prompt  # noqa: E402
from gpt2_lightning.data.records import load_records, split_records  # noqa: E402
from gpt2_lightning.evaluate.plot import read_scalars  # noqa: E402
from gpt2_lightning.export.load import load_model  # noqa: E402
from gpt2_lightning.generation.sampling import generate  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig, GPTModel  # noqa: E402
from gpt2_lightning.model.tokenizer import EOT_ID, encode  # noqa: E402
from gpt2_lightning.train.checkpoints import model_from_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SIDES = {"ours": "train.py (whole process)", "trl": "TRL SFTTrainer (whole process)",
         "baseline": "plain PyTorch loop (training only)"}


def collate(batch, ignore_index=-100, allowed_max_length=1024):
    """The reference's custom_collate_fn: pad with <|endoftext|>, shift, mask all but one pad."""
    width = max(len(item) + 1 for item in batch)
    inputs, targets = [], []
    for item in batch:
        padded = item + [EOT_ID] * (width - len(item))
        x, y = torch.tensor(padded[:-1]), torch.tensor(padded[1:])
        pad = torch.nonzero(y == EOT_ID).squeeze()
        if pad.numel() > 1:
            y[pad[1:]] = ignore_index
        inputs.append(x[:allowed_max_length])
        targets.append(y[:allowed_max_length])
    return torch.stack(inputs), torch.stack(targets)


def batch_loss(model, x, y):
    return F.cross_entropy(model(x).flatten(0, 1), y.flatten())


def loader_loss(model, loader, num_batches=None):
    total, n = 0.0, 0
    for i, (x, y) in enumerate(loader):
        if num_batches is not None and i >= num_batches:
            break
        total += batch_loss(model, x, y).item()
        n += 1
    return total / max(n, 1)


def encoded(records):
    return [encode(format_example(r)) for r in records]


def eval_loader(records) -> DataLoader:
    return DataLoader(encoded(records), batch_size=8, shuffle=False, collate_fn=collate)


def val_loss(model, val_loader: DataLoader) -> float:
    """The baseline's score: fp32 mean batch loss over the whole val split."""
    model.eval()
    with torch.no_grad():
        return loader_loss(model, val_loader)


def score(model, data: Path) -> float:
    """Every side's final model scored alike: ``val_loss`` over the val split of ``data``."""
    _, val, _ = split_records(load_records(data))
    return val_loss(model.float(), eval_loader(val))


def plain_loop(data: Path, epochs: int) -> tuple[float, float]:
    train, val, _ = split_records(load_records(data))
    torch.manual_seed(123)
    train_loader = DataLoader(encoded(train), batch_size=8, shuffle=True, drop_last=False, collate_fn=collate)
    val_loader = eval_loader(val)
    model = GPTModel(GPTConfig.from_name("gpt2-small"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
    start = time.perf_counter()
    step = 0
    for _ in range(epochs):
        model.train()
        for x, y in train_loader:
            optimizer.zero_grad()
            batch_loss(model, x, y).backward()
            optimizer.step()
            step += 1
            if step % 5 == 0:
                model.eval()
                with torch.no_grad():
                    loader_loss(model, train_loader, 5), loader_loss(model, val_loader, 5)
                model.train()
        context = torch.tensor([encode(format_prompt(val[0]))])
        generate(model, context, 35)
    elapsed = time.perf_counter() - start
    return elapsed, val_loss(model, val_loader)


def through_train_py(data: Path, epochs: int, overrides: list[str]) -> tuple[float, float, str]:
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(REPO / "train.py"), "model=gpt2-small", "model.pretrained=false",
                               f"data.path={data}", "data.url=null", f"trainer.max_epochs={epochs}", "test=false",
                               "respond=false", "plot=false", "export=false", "callbacks.progress_bar.refresh_rate=0",
                               "+trainer.profiler=simple", f"hydra.run.dir={run_dir}", *overrides],
                              check=True, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        print_phases(done.stdout + done.stderr, elapsed)
        log = (Path(run_dir) / "train.log").read_text()
        logged = read_scalars(Path(run_dir) / "tensorboard")["val_loss"][-1][1]
        model, _ = model_from_checkpoint(Path(run_dir) / "checkpoints" / "last.ckpt")
    precision = log.split("precision ")[1].split()[0]
    print(f"train.py ran with precision {precision}; its last logged val_loss {logged:.4f}")
    return elapsed, score(model, data), precision


# Lightning's SimpleProfiler actions that make up a run, and what to call them.
PHASES = {"run_training_batch": "training steps (forward, backward, optimizer)",
          "[_EvaluationLoop].val_next": "validation batches (loading)",
          "[Strategy]SingleDeviceStrategy.validation_step": "validation steps",
          "[_TrainingEpochLoop].train_dataloader_next": "training batches (loading)",
          "save_checkpoint": "checkpoint writes",
          "[Callback]ResponseSample.on_validation_end": "sample answers after validations"}


def print_phases(output: str, elapsed: float) -> None:
    """Where ``train.py``'s process spent its time, from Lightning's SimpleProfiler report."""
    totals = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) >= 5 and cells[1] in PHASES:
            totals[cells[1]] = float(cells[4])
    for action, seconds in totals.items():
        print(f"  {PHASES[action]:48s} {seconds:7.1f} s")
    print(f"  {'the rest (start-up, calibration, data, Lightning)':48s} {elapsed - sum(totals.values()):7.1f} s")


def compute_floor(data: Path, epochs: int, precision: str) -> tuple[float, int]:
    """Seconds of 6 x parameters x the training split's real tokens at the measured peak matmul
    throughput in ``precision`` (no padding, no attention, no validation), and those tokens."""
    from train_step import peak_matmul_flops

    train, _, _ = split_records(load_records(data))
    tokens = epochs * sum(len(item) for item in encoded(train))
    with torch.device("meta"):  # the shape alone
        params = sum(p.numel() for p in GPTModel(GPTConfig.from_name("gpt2-small")).parameters())
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32
    return 6 * params * tokens / peak_matmul_flops(torch.device(training_device("auto")), dtype), tokens


def through_trl(data: Path, epochs: int, bf16: bool) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "bench" / "sft_trl.py"), f"--data={data}", f"--out={out}",
                        f"--epochs={epochs}", *(["--bf16"] if bf16 else [])], check=True)
        elapsed = time.perf_counter() - start
        model, _ = load_model(Path(out) / "model")  # the Hugging Face folder it saved
    return elapsed, score(model, data)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=SEED_DATA)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--train-overrides", nargs="*", default=[],
                        help="more overrides for train.py, e.g. trainer.plugins=[] (Lightning's own checkpoint writer)")
    args = parser.parse_args()
    print(machine())
    results = {}
    if "ours" in args.sides:
        results["ours"] = through_train_py(args.data, args.epochs, args.train_overrides)
    if "trl" in args.sides:  # in the precision train.py chose (or would choose) here
        precision = results["ours"][2] if "ours" in results else training_plan(training_device("auto")).precision
        results["trl"] = (*through_trl(args.data, args.epochs, precision.startswith("bf16")), precision)
    if "baseline" in args.sides:
        results["baseline"] = (*plain_loop(args.data, args.epochs), "32-true")
    for side, (seconds, loss, precision) in results.items():
        print(f"{SIDES[side]:45s} {seconds:7.1f} s, {precision}, final val loss {loss:.4f}")
    if "ours" in results:
        ours_s, ours_loss, precision = results["ours"]
        floor, tokens = compute_floor(args.data, args.epochs, precision)
        print(f"compute floor ({tokens} real tokens, 6 x parameters each, at the measured peak {precision} "
              f"matmul): {floor:.1f} s; train.py {ours_s / floor:.2f}x the floor")
        for side, (seconds, loss, _) in results.items():
            if side != "ours":
                print(f"train.py against {side}: {seconds / ours_s:.2f}x faster, val loss "
                      f"{(ours_loss - loss) / loss:+.1%}")
    print(json.dumps({side: {"s": round(s, 1), "val_loss": round(v, 4), "precision": p}
                      for side, (s, v, p) in results.items()}))


if __name__ == "__main__":
    main()
