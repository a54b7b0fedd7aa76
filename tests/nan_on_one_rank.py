"""A callback for the multi-process tests: poisons the weights of one process only."""

import lightning as L
import torch


class NaNOnOneRank(L.Callback):
    """At ``step``, the process of ``rank`` gets NaN weights; the others keep theirs."""

    def __init__(self, rank: int = 1, step: int = 2):
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.model.final_norm.weight.fill_(float("nan"))
