"""Lightning callbacks of the project."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from gpt2_lightning.generation import generate
from gpt2_lightning.prompts import get_style
from gpt2_lightning.tokenizer import decode, encode


class ResponseSample(L.Callback):
    """After each validation, answer a fixed instruction and log it as TensorBoard text,
    so the model's progress can be read, not only its loss."""

    def __init__(self, instruction: str = "Rewrite the sentence using a simile.",
                 input: str = "The car is very fast.", max_new_tokens: int = 48):
        self.record = {"instruction": instruction, "input": input}
        self.max_new_tokens = max_new_tokens

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        style = get_style(pl_module.hparams.prompt_style)
        prompt = style.prompt(self.record)
        idx = torch.tensor([encode(prompt)], device=pl_module.device)
        out = generate(pl_module.model, idx, self.max_new_tokens)
        answer = style.extract(decode(out[0, idx.shape[1]:].tolist()))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                text = f"**{prompt.strip()}**\n\n{answer}".replace("\n", "  \n")
                logger.experiment.add_text("sample_response", text, trainer.global_step)
