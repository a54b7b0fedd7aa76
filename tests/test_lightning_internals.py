"""The Lightning internals the project builds on (``train/lightning_internals.py``) are still
there, and still do what it needs: a Lightning upgrade that changes one fails here."""

import inspect

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gpt2_lightning.train.lightning_internals import CHECKPOINT_METHODS, stop_after_this_batch


@pytest.mark.parametrize("name", CHECKPOINT_METHODS)
def test_model_checkpoint_still_has_the_methods_last_checkpoint_builds_on(name):
    method = getattr(ModelCheckpoint, name)
    assert list(inspect.signature(method).parameters)[:2] == ["self", "trainer"]


class Counting(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.batches = 0

    def training_step(self, batch, batch_idx):
        self.batches += 1
        if batch_idx == 1:
            stop_after_this_batch(self.trainer)
        return self.layer(batch).sum()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(10, 2), batch_size=1)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_stop_after_this_batch_ends_training_after_the_batch_as_sigterm_does(tmp_path):
    module = Counting()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(SIGTERMException):
        trainer.fit(module)
    assert module.batches == 2 and trainer.global_step == 2
