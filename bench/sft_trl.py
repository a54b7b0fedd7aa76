"""The peer a user would pick instead of ``train.py``: Hugging Face TRL's ``SFTTrainer`` on a
``GPT2LMHeadModel`` (the gpt2-small shape, random init, no dropout, as ``train.py`` trains it
here), the same 935 / 55 split of the seed data in the same Alpaca text, 2 epochs of batch 8,
AdamW (fused) at lr 5e-5 with weight decay 0.1 off biases and norms, a constant schedule, no
gradient clipping (the Trainer clips at 1.0 unless told), validation four times an epoch, the
same precision. Saves the final model to ``--out``.
``bench/end_to_end.py`` runs it in a process of its own and times the whole process.

    python bench/sft_trl.py --data DATA --out DIR [--epochs 2] [--bf16]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402, F401  (the offline tokenizer cache)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast
    from trl import SFTConfig, SFTTrainer

    from gpt2_lightning.data.prompts import format_example, get_style
    from gpt2_lightning.data.records import load_records, split_records
    from gpt2_lightning.export.hf import write_tokenizer

    train, val, _ = split_records(load_records(args.data))
    with tempfile.TemporaryDirectory() as folder:
        write_tokenizer(Path(folder), get_style("alpaca"), 1024)
        tokenizer = GPT2TokenizerFast.from_pretrained(folder)
    torch.manual_seed(123)
    model = GPT2LMHeadModel(GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    steps_per_epoch = math.ceil(len(train) / 8)
    config = SFTConfig(
        output_dir=str(args.out / "trainer"), num_train_epochs=args.epochs, per_device_train_batch_size=8,
        per_device_eval_batch_size=8, learning_rate=5e-5, weight_decay=0.1, lr_scheduler_type="constant",
        warmup_steps=0, max_grad_norm=0.0, optim="adamw_torch_fused", eval_strategy="steps",
        eval_steps=math.ceil(steps_per_epoch / 4), logging_steps=5, save_strategy="no", report_to="none",
        bf16=args.bf16, use_cpu=not torch.cuda.is_available(), seed=123, max_length=1024, packing=False,
        dataloader_num_workers=0, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=config, processing_class=tokenizer,
                         train_dataset=Dataset.from_dict({"text": [format_example(r) for r in train]}),
                         eval_dataset=Dataset.from_dict({"text": [format_example(r) for r in val]}))
    trainer.train()
    trainer.save_model(str(args.out / "model"))
    evals = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    print(f"SFTTrainer: {len(evals)} evaluations, last eval_loss {evals[-1]:.4f}")


if __name__ == "__main__":
    main()
