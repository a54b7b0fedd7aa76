"""End to end: fine-tune the gpt2-small shape (random init) for 2 epochs on the seed data with
validation, through ``train.py`` with its defaults, against a plain PyTorch loop of the
reference's kind (batch 8 padded to the longest, fp32, torch AdamW defaults, evaluation on 5
train + 5 val batches every 5 steps, a sample generation after each epoch, no Lightning).
Both see the same 935 examples per epoch. Both final models are scored by the same function:
the baseline's fp32 mean loss over the whole val split (for ``train.py``, its ``last.ckpt``).

    python bench/end_to_end.py [--data ../shared/data/instruction-data.json] [--epochs 2] [--only ours]
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

from gpt2_lightning.data.prompts import format_example, format_prompt  # noqa: E402
from gpt2_lightning.data.records import load_records, split_records  # noqa: E402
from gpt2_lightning.evaluate.plot import read_scalars  # noqa: E402
from gpt2_lightning.generation.sampling import generate  # noqa: E402
from gpt2_lightning.model.gpt import GPTConfig, GPTModel  # noqa: E402
from gpt2_lightning.model.tokenizer import EOT_ID, encode  # noqa: E402
from gpt2_lightning.train.checkpoints import model_from_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


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


def through_train_py(data: Path, epochs: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "train.py"), "model=gpt2-small", "model.pretrained=false",
                        f"data.path={data}", "data.url=null", f"trainer.max_epochs={epochs}", "test=false",
                        "respond=false", "plot=false", "export=false", "callbacks.progress_bar.refresh_rate=0",
                        f"hydra.run.dir={run_dir}"], check=True, stdout=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
        log = (Path(run_dir) / "train.log").read_text()
        logged = read_scalars(Path(run_dir) / "tensorboard")["val_loss"][-1][1]
        model, _ = model_from_checkpoint(Path(run_dir) / "checkpoints" / "last.ckpt")
    precision = log.split("precision ")[1].split()[0]
    print(f"train.py ran with precision {precision}; its last logged val_loss {logged:.4f}")
    _, val, _ = split_records(load_records(data))
    return elapsed, val_loss(model.float(), eval_loader(val))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=SEED_DATA)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--only", choices=("ours", "baseline"), help="run one side (no ratio)")
    args = parser.parse_args()
    print(machine())
    if args.only != "baseline":
        ours, ours_val = through_train_py(args.data, args.epochs)
        print(f"train.py (whole process):  {ours:7.1f} s, final val loss {ours_val:.4f}")
    if args.only != "ours":
        base, base_val = plain_loop(args.data, args.epochs)
        print(f"plain loop (training only): {base:7.1f} s, final val loss {base_val:.4f}")
    if args.only:
        return
    print(json.dumps({"speedup": round(base / ours, 2), "ours_s": round(ours, 1), "baseline_s": round(base, 1),
                      "ours_val_loss": round(ours_val, 4), "baseline_val_loss": round(base_val, 4)}))


if __name__ == "__main__":
    main()
