"""Lightning callbacks of the project."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from gpt2_lightning.prompts import format_prompt
from gpt2_lightning.respond import GenerationSettings, answer_batch


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
        style = pl_module.hparams.prompt_style
        settings = GenerationSettings(max_new_tokens=self.max_new_tokens)
        [answer] = answer_batch(pl_module.model, [self.record], style, settings)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                text = f"**{format_prompt(self.record, style).strip()}**\n\n{answer}".replace("\n", "  \n")
                logger.experiment.add_text("sample_response", text, trainer.global_step)
