"""Lightning callbacks of the project."""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from gpt2_lightning.data.prompts import format_prompt
from gpt2_lightning.generation.placement import generation_copy
from gpt2_lightning.generation.respond import answer_batch
from gpt2_lightning.generation.sampling import SamplingParams
from gpt2_lightning.train.lightning_internals import stop_after_this_batch
from gpt2_lightning.train.strategies import shards_parameters

log = logging.getLogger(__name__)


class ResponseSample(L.Callback):
    """After each validation, answer a fixed instruction and log it as TensorBoard text,
    so the model's progress can be read, not only its loss."""

    def __init__(self, instruction: str = "Rewrite the sentence using a simile.",
                 input: str = "The car is very fast.", max_new_tokens: int = 48):
        self.record = {"instruction": instruction, "input": input}
        self.max_new_tokens = max_new_tokens

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Where the parameters are sharded, every forward is a collective: all processes generate
        # (greedy decoding takes the same steps on each); elsewhere only the one that logs.
        if trainer.sanity_checking or not (trainer.is_global_zero or shards_parameters(trainer.strategy)):
            return
        style = pl_module.hparams.prompt_style
        model, plan = pl_module.model, pl_module.plan
        # As the run's answers will be generated: in the plan's dtype, from a copy (48 tokens of
        # gpt2-small in bf16, the copy included: 1.2 s against 2.0 in fp32 on an AMD EPYC Zen 4);
        # sharded parameters are generated from in place.
        if (plan is not None and not shards_parameters(trainer.strategy)
                and next(model.parameters()).dtype != plan.generate.torch_dtype):
            model = generation_copy(model, plan)
        [answer] = answer_batch(model, [self.record], style, SamplingParams(self.max_new_tokens))
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                text = f"**{format_prompt(self.record, style).strip()}**\n\n{answer}".replace("\n", "  \n")
                logger.experiment.add_text("sample_response", text, trainer.global_step)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``, the full training state to resume from, saved

    - once ``train_time_interval`` of training has passed since it was last saved (or since
      training started), or every N steps, as ``ModelCheckpoint`` does,
    - at a validation when none was saved in the last ``validation_interval`` (so the first
      validation of a short run always saves),
    - at the last step of ``trainer.max_steps``, inside its epoch, and at the end of training,
      unless it was just saved at that very step.

    Both intervals count from the last save, whatever made it: a long run pays one write (~3-8 s
    for gpt2-small) per interval, however often it validates.

    It builds on ``ModelCheckpoint``'s private methods (``lightning_internals.CHECKPOINT_METHODS``).
    """

    def __init__(self, dirpath: str, train_time_interval: timedelta | None = timedelta(minutes=5),
                 validation_interval: timedelta | None = timedelta(minutes=5), every_n_train_steps: int | None = None):
        # every_n_epochs=0: Lightning's own default, with neither interval given it, saves at every epoch's end.
        super().__init__(dirpath=dirpath, save_top_k=0, save_last=True, every_n_train_steps=every_n_train_steps,
                         every_n_epochs=0)
        self.train_interval = train_time_interval
        self.validation_interval = validation_interval
        self._saved_at: float | None = None
        self._started_at = time.monotonic()

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._saved_at = time.monotonic()

    def _save_now(self, trainer: L.Trainer) -> None:
        if not self._should_skip_saving_checkpoint(trainer):  # skips sanity checks and a step already saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _due(self, trainer: L.Trainer, interval: timedelta | None, since: float | None) -> bool:
        """Whether ``interval`` has passed ``since`` (None: at once), as the first process sees it:
        the processes' clocks differ, and a save is a collective."""
        if interval is None:
            return False
        return trainer.strategy.broadcast(since is None or time.monotonic() - since >= interval.total_seconds())

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._started_at = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._due(trainer, self.validation_interval, self._saved_at):
            self._save_now(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        if self._due(trainer, self.train_interval, self._saved_at or self._started_at):
            self._save_now(trainer)
        if 0 <= trainer.max_steps <= trainer.global_step:
            # The last step of trainer.max_steps, saved while its epoch is still open: once training
            # ends, Lightning counts that epoch as completed, and a run resumed to train on would skip its rest.
            self._save_now(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_now(trainer)


def last_checkpoint_path(trainer: L.Trainer) -> Path | None:
    """Where this run keeps ``last.ckpt``: the folder of its ModelCheckpoint that saves
    last (or of any ModelCheckpoint), None when the run saves no checkpoints."""
    callbacks = trainer.checkpoint_callbacks
    keeper = next((cb for cb in callbacks if cb.save_last), callbacks[0] if callbacks else None)
    if keeper is None or keeper.dirpath is None:
        return None
    return Path(keeper.dirpath) / f"{keeper.CHECKPOINT_NAME_LAST}{keeper.FILE_EXTENSION}"


class GracefulStop(L.Callback):
    """Ctrl-C (SIGINT) or SIGTERM: finish the current batch, save ``last.ckpt``, stop.

    Lightning already turns SIGTERM into a stop after the batch; SIGINT is routed the same
    way instead of raising ``KeyboardInterrupt`` mid-step (a second Ctrl-C still does).
    """

    def __init__(self):
        self.signal: int | None = None
        self._previous_handler = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def request_stop(signum, frame):
            if self.signal is not None:  # second press: stop now
                raise KeyboardInterrupt
            self.signal = signum
            log.warning("stopping after this batch (Ctrl-C again to stop at once)")
            stop_after_this_batch(trainer)

        self._previous_handler = signal.signal(signal.SIGINT, request_stop)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        if self.signal is None:
            self.signal = signal.SIGTERM if isinstance(exception, SIGTERMException) else signal.SIGINT
        path = last_checkpoint_path(trainer)
        if path is not None:
            trainer.save_checkpoint(path, weights_only=False)  # the full state, to resume from
            log.warning("interrupted at step %d; saved %s (resume with ckpt_path=%s)",
                        trainer.global_step, path, path)

    def _restore(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar, which shows a run resumed mid-epoch as an epoch too: Lightning
    calls no ``on_train_epoch_start`` for the epoch it resumes in, so its bar would count from the
    resumed batch with no epoch, no total and no ETA (``Training: 9/?``)."""

    _shown_epoch: int | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._shown_epoch = trainer.current_epoch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.train_progress_bar is not None and self._shown_epoch != trainer.current_epoch:
            self.on_train_epoch_start(trainer, pl_module)
            self.train_progress_bar.initial = self.train_progress_bar.n = batch_idx  # its rate counts from here
