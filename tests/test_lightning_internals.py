"""The Lightning internals the project builds on (``train/lightning_internals.py``) are still
there, and still do what it needs: a Lightning upgrade that changes one fails here."""

import inspect

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gpt2_lightning.train.lightning_internals import CHECKPOINT_METHODS, stop_after_this_batch, validate_at_even_fractions


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


class Validated(Counting):
    """The global step of every validation of a 10-batch epoch."""

    def __init__(self):
        super().__init__()
        self.validated_at = []

    def training_step(self, batch, batch_idx):
        return self.layer(batch).sum()

    def validation_step(self, batch, batch_idx):
        return None

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self.validated_at.append(self.global_step)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(2, 2), batch_size=1)


def validations(tmp_path, interval, even: bool) -> list[int]:
    module = Validated()
    trainer = L.Trainer(max_epochs=2, val_check_interval=interval, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    if even:
        validate_at_even_fractions(trainer)
    trainer.fit(module)
    return module.validated_at


def test_validate_at_even_fractions_ends_each_epoch_with_a_validation(tmp_path):
    # 10 batches at 0.25: a validation every 2.5 batches, after batches 3, 5, 8 and 10 of each epoch,
    # where Lightning validates every int(2.5) = 2.
    assert validations(tmp_path, 0.25, even=True) == [3, 5, 8, 10, 13, 15, 18, 20]
    assert validations(tmp_path, 0.25, even=False) == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]


@pytest.mark.parametrize("interval, expected", [(1.0, [10, 20]), (4, [4, 8, 14, 18])])
def test_validate_at_even_fractions_leaves_whole_epochs_and_batch_counts_as_lightning_has_them(
        tmp_path, interval, expected):
    assert validations(tmp_path, interval, even=True) == expected == validations(tmp_path, interval, even=False)
