"""``PreferenceTuner``: the LightningModule that tunes a ``GPTModel`` on preferences (DPO and its kin)."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric

from gpt2_lightning.errors import CheckpointMismatchError, ConfigError
from gpt2_lightning.model.lora import adapters_disabled
from gpt2_lightning.train.module import InstructionTuner
from gpt2_lightning.train.preference import LOSS_TYPES, answer_logprobs, preference_loss
from gpt2_lightning.train.reference import compute_reference, read_reference, reference_key, save_reference

log = logging.getLogger(__name__)

STATS = ("rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy", "logps_chosen", "logps_rejected")


class PreferenceTuner(InstructionTuner):
    """An ``InstructionTuner`` whose loss is a preference loss over batches of ``2B`` rows (the
    chosen answers, then the rejected: ``PreferenceCollator``), against a reference model that is
    never a second model in memory: its log-probabilities are computed once, before the first
    step, and kept in ``reference_file``; with LoRA adapters the reference is the base, the
    adapters switched off. ``simpo`` needs no reference at all.

    Logged for ``train`` (per step), ``val`` and ``test``: ``loss`` and the ``STATS``.
    """

    LOSS_IS_CROSS_ENTROPY = False

    def __init__(self, gpt_config: dict[str, Any], *args: Any, beta: float = 0.1, loss_type: str = "sigmoid",
                 label_smoothing: float = 0.0, gamma: float = 0.5, average_logprobs: bool = False,
                 sft_weight: float = 0.0, reference_file: str | None = None, **kwargs: Any):
        if loss_type not in LOSS_TYPES:
            raise ConfigError(f"dpo.loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
        if not beta > 0:
            raise ConfigError(f"dpo.beta must be positive, got {beta}")
        if not 0 <= label_smoothing < 0.5:
            raise ConfigError(f"dpo.label_smoothing must be in [0, 0.5), got {label_smoothing}")
        if sft_weight < 0:
            raise ConfigError(f"dpo.sft_weight must be at least 0, got {sft_weight}")
        super().__init__(gpt_config, *args, **kwargs)
        self.logprobs_fn = answer_logprobs
        self.stats = nn.ModuleDict({split: nn.ModuleDict({name: MeanMetric() for name in STATS})
                                    for split in ("val", "test")})
        self._batch_stats: dict[str, torch.Tensor] = {}

    @property
    def needs_reference(self) -> bool:
        """Whether the reference's log-probabilities come from before training (not LoRA's base, not SimPO)."""
        return not self.hparams.adapter and self.hparams.loss_type != "simpo"

    def configure_model(self) -> None:
        super().configure_model()
        self.logprobs_fn = functools.partial(answer_logprobs, token_losses=self.kernels.token_losses)

    def _logprobs(self, input_ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's log-probability (summed or averaged, as set) and its summed log-probability and count."""
        sums, counts = self.logprobs_fn(self.model, input_ids, targets)
        return (sums / counts.clamp(min=1) if self.hparams.average_logprobs else sums), sums, counts

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hp = self.hparams
        input_ids, targets = batch["input_ids"], batch["targets"]
        logps, sums, counts = self._logprobs(input_ids, targets)
        pairs = len(input_ids) // 2
        reference_chosen, reference_rejected = self._reference(batch).to(logps.dtype).chunk(2) \
            if hp.loss_type != "simpo" else (None, None)
        loss, chosen, rejected = preference_loss(
            logps[:pairs], logps[pairs:], reference_chosen, reference_rejected,
            beta=hp.beta, loss_type=hp.loss_type, label_smoothing=hp.label_smoothing, gamma=hp.gamma)
        if hp.sft_weight:  # the chosen answers' mean token cross-entropy, as the SFT loss has it
            loss = loss + hp.sft_weight * -sums[:pairs].sum() / counts[:pairs].sum().clamp(min=1)
        self._batch_stats = {"rewards_chosen": chosen.mean(), "rewards_rejected": rejected.mean(),
                             "rewards_margin": (chosen - rejected).mean(),
                             "rewards_accuracy": (chosen > rejected).float().mean(),
                             "logps_chosen": logps[:pairs].detach().mean(), "logps_rejected": logps[pairs:].detach().mean()}
        return loss, torch.tensor(pairs, device=loss.device), counts.sum()

    def _reference(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The reference's log-probability of each row: LoRA's base (the adapters off), else precomputed."""
        if not self.needs_reference:
            with torch.no_grad(), adapters_disabled(self.model):
                return self._logprobs(batch["input_ids"], batch["targets"])[0]
        if "reference_logps" not in batch:
            raise RuntimeError("a preference batch without the reference's log-probabilities (reference_logps)")
        return batch["reference_logps"]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log_dict({f"train_{k}": v for k, v in self._batch_stats.items()}, on_step=True, on_epoch=False,
                      sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        self._update_stats("val", len(batch["input_ids"]) // 2)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        self._update_stats("test", len(batch["input_ids"]) // 2)

    def _update_stats(self, split: str, pairs: int) -> None:
        for name, value in self._batch_stats.items():
            self.stats[split][name].update(value, weight=pairs)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_stats("val")

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_stats("test")

    def _log_stats(self, split: str) -> None:
        values = {}
        for name, metric in self.stats[split].items():
            values[f"{split}_{name}"] = metric.compute()
            metric.reset()
        self.log_dict(values, sync_dist=True)

    # --- the reference ----------------------------------------------------------------------

    def on_fit_start(self) -> None:
        self._attach_reference()

    def on_test_start(self) -> None:
        self._attach_reference()

    def _attach_reference(self) -> None:
        """Give every split its reference log-probabilities: from the run's file when it holds
        them for this data, else computed now by the model as it is (the reference: nothing has
        trained it yet). A run resumed from a checkpoint has moved from the reference: it must
        find them saved."""
        datamodule = self.trainer.datamodule
        if not self.needs_reference or all(d.reference is not None for d in datamodule.datasets.values()):
            return
        datasets = {name: datamodule.dataset(name) for name in datamodule.datasets}
        key = reference_key(datasets, self.hparams.average_logprobs, str(self.trainer.precision))
        path = Path(self.hparams.reference_file) if self.hparams.reference_file else None
        values = read_reference(path, key) if path is not None else None
        if values is None:
            if self.trainer.ckpt_path:
                raise CheckpointMismatchError(
                    f"{path}: the reference log-probabilities this run trained against are missing, or were computed "
                    f"for other data or settings; the checkpoint's policy has moved from the reference, so they cannot "
                    f"be computed again: start the run afresh")
            started, was_training = time.perf_counter(), self.model.training
            self.model.eval()
            values = compute_reference(datasets, lambda ids, targets: self._logprobs(ids, targets)[0],
                                       datamodule.eval_batch_size or datamodule.batch_size, self.device,
                                       self.trainer.precision_plugin.forward_context)
            self.model.train(was_training)
            if path is not None and self.trainer.is_global_zero:
                save_reference(path, key, values)
            log.info("reference log-probabilities of %d preferences: %.1f s%s", sum(len(d) for d in datasets.values()),
                     time.perf_counter() - started, f", kept in {path}" if path is not None else "")
        for name, dataset in datasets.items():
            dataset.reference = values[name]
