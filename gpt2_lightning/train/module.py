"""``InstructionTuner``: the LightningModule that fine-tunes a ``GPTModel`` on instruction data."""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torchmetrics import MeanMetric

from gpt2_lightning.backends import ExecutionPlan, Kernels, prepare_for_training, training_plan
from gpt2_lightning.data.prompts import DEFAULT_STYLE
from gpt2_lightning.errors import CheckpointMismatchError, ConfigError, TrainingDivergedError
from gpt2_lightning.model.gpt import GPTConfig, GPTModel
from gpt2_lightning.model.lora import LoRAConfig, add_lora, is_adapter_key
from gpt2_lightning.train.loss import masked_lm_loss

# Strategies whose gradients are whole local tensors that torch's clipping can handle.
SingleOrDDP = (SingleDeviceStrategy, DDPStrategy)


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float):
    """Multiplier of the base learning rate: linear warm-up, then constant or cosine decay."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


class InstructionTuner(L.LightningModule):
    """GPT-2 + next-token cross-entropy + AdamW, logging to TensorBoard.

    Everything needed to rebuild the model (its config and the prompt style) is saved as
    hyperparameters, so a checkpoint alone restores it. With an ``adapter`` (LoRA), only the
    adapters train and checkpoints hold them alone, with the identity of the ``base``
    weights (spec, file, sha256) they were trained on. ``plan`` says how it computes (the
    training job's ``ExecutionPlan``); without one, the module makes its own for the trainer's
    device and precision.
    """

    LOSS_IS_CROSS_ENTROPY = True

    def __init__(self, gpt_config: dict[str, Any], prompt_style: str = DEFAULT_STYLE, lr: float = 5e-5,
                 weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.999),
                 warmup_steps: int = 0, schedule: str = "constant", min_lr_ratio: float = 0.1,
                 decay_biases_and_norms: bool = False, compile: bool = False, adapter: dict[str, Any] | None = None,
                 base: dict[str, str] | None = None, model: GPTModel | None = None,
                 plan: ExecutionPlan | None = None):
        super().__init__()
        if schedule not in ("constant", "cosine"):
            raise ConfigError(f"optimizer.schedule must be 'constant' or 'cosine', got {schedule!r}")
        if lr <= 0:
            raise ConfigError(f"optimizer.lr must be positive, got {lr}")
        self.save_hyperparameters(ignore=["model", "plan"])
        config = GPTConfig.from_dict(gpt_config)
        if model is not None and model.cfg != config:
            raise ValueError(f"the given model's config {model.cfg} differs from gpt_config {config}")
        self.model = model if model is not None else GPTModel(config)
        if adapter:
            add_lora(self.model, LoRAConfig(**adapter))
        # A LoRA run's checkpoints hold the adapters alone; the base comes from ``base``.
        self.strict_loading = not adapter
        self.plan = plan
        self.kernels = Kernels()
        self.loss_fn = masked_lm_loss
        self.train_loss_epoch = MeanMetric()
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.tokens_seen = 0
        self.scored_tokens_seen = 0
        self.training_seconds = 0.0
        """Time in training steps, over every part of a resumed run (validation not counted)."""
        self._step_started = 0.0
        self._scored_in_step = torch.zeros(())
        self._rng_state_to_restore: torch.Tensor | None = None
        self.last_validated_step: int | None = None

    @property
    def config(self) -> GPTConfig:
        return self.model.cfg

    def configure_model(self) -> None:
        if self.plan is None:
            self.plan = training_plan(self.trainer.strategy.root_device, str(self.trainer.precision),
                                      self.config.emb_dim)
        self.kernels = prepare_for_training(self.model, self.plan)
        self.loss_fn = functools.partial(masked_lm_loss, head_loss=self.kernels.head_loss)
        if self.hparams.compile:  # what training runs (the loss), not forward; parameter names stay the same
            self.loss_fn = torch.compile(self.loss_fn, dynamic=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's loss, its weight in an epoch's mean (here: the scored targets) and the number
        of scored targets."""
        loss, count = self.loss_fn(self.model, batch["input_ids"], batch["targets"])
        return loss, count, count

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._rng_state_to_restore is not None:  # here, not at loading: making the data iterator draws from it
            torch.set_rng_state(self._rng_state_to_restore)
            self._rng_state_to_restore = None
        self._step_started = time.perf_counter()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, weight, scored = self._loss(batch)
        finite = bool(torch.isfinite(loss))  # one sync per step, to never step on a NaN gradient
        # Every process decides together: one that stopped alone would leave the others waiting.
        if not self.trainer.strategy.reduce_boolean_decision(finite, all=True):
            what = f"is {loss.item()}" if not finite else "is NaN or infinite on another process"
            raise TrainingDivergedError(
                f"the training loss {what} at step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}); lower optimizer.lr, set trainer.gradient_clip_val, or use "
                f"trainer.precision=bf16-mixed instead of 16-mixed")
        self.train_loss_epoch.update(loss.detach(), weight=weight)
        self._scored_in_step = scored
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Throughput of all positions (padding included) and of the scored targets alone."""
        tokens = batch["input_ids"].numel() * self.trainer.world_size
        scored = self._scored_in_step
        if self.trainer.world_size > 1:  # ranks score different numbers of targets
            scored = self.trainer.strategy.reduce(scored.float(), reduce_op="sum")
        scored = int(scored)
        self.tokens_seen += tokens
        self.scored_tokens_seen += scored
        elapsed = max(time.perf_counter() - self._step_started, 1e-9)
        self.training_seconds += elapsed
        self.log_dict({"tokens_seen": float(self.tokens_seen), "tokens_per_sec": tokens / elapsed,
                       "scored_tokens_seen": float(self.scored_tokens_seen),
                       "scored_tokens_per_sec": scored / elapsed}, on_step=True, on_epoch=False)

    def on_train_epoch_end(self) -> None:
        self.log("train_loss_epoch", self.train_loss_epoch.compute(), sync_dist=True)
        self.train_loss_epoch.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, weight, _ = self._loss(batch)
        self.val_loss.update(loss, weight)

    def on_validation_epoch_end(self) -> None:
        self._log_token_mean(self.val_loss, "val", prog_bar=True)
        if not self.trainer.sanity_checking:
            self.last_validated_step = self.global_step

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, weight, _ = self._loss(batch)
        self.test_loss.update(loss, weight)

    def on_test_epoch_end(self) -> None:
        self._log_token_mean(self.test_loss, "test")

    def _log_token_mean(self, metric: MeanMetric, split: str, prog_bar: bool = False) -> None:
        """Log the split's loss averaged over tokens (synced across processes) and, where the loss
        is a cross-entropy, its perplexity."""
        loss = metric.compute()
        metric.reset()
        values = {f"{split}_loss": loss, **({f"{split}_ppl": torch.exp(loss)} if self.LOSS_IS_CROSS_ENTROPY else {})}
        self.log_dict(values, prog_bar=prog_bar, sync_dist=True)

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for param in self.model.parameters():  # tied head: parameters() yields it once
            if not param.requires_grad:  # frozen under LoRA: no optimizer state
                continue
            (decay if param.dim() >= 2 or hp.decay_biases_and_norms else no_decay).append(param)
        groups = [{"params": decay, "weight_decay": hp.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        # Fused AdamW: one kernel for all parameters (0.09 s instead of 0.7 s per step for
        # gpt2-small on a CPU). Not with fp16's loss scaler, whose unscaling it would take over.
        fused = self.trainer.precision != "16-mixed" and \
            all(p.device.type in ("cpu", "cuda", "mps") for p in decay + no_decay)
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), fused=fused)
        factor = lr_lambda(hp.warmup_steps, int(self.trainer.estimated_stepping_batches),
                           hp.schedule, hp.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Clip with torch directly: Lightning refuses to clip for fused optimizers under
        mixed precision (for fear of fp16 loss scaling, which never meets them here)."""
        if not gradient_clip_val:
            return
        if self.trainer.precision == "16-mixed" or not isinstance(self.trainer.strategy, SingleOrDDP):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["scored_tokens_seen"] = self.scored_tokens_seen
        checkpoint["training_seconds"] = self.training_seconds
        checkpoint["last_validated_step"] = self.last_validated_step
        # Dropout draws from torch's generator: a resumed run goes on with the same masks.
        checkpoint["torch_rng_state"] = torch.get_rng_state()
        if self.hparams.adapter:
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if is_adapter_key(k)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_same_adaptation(checkpoint.get("hyper_parameters", {}), self.hparams)
        self._rng_state_to_restore = checkpoint.get("torch_rng_state")
        self.tokens_seen = checkpoint.get("tokens_seen", 0)
        self.scored_tokens_seen = checkpoint.get("scored_tokens_seen", 0)
        self.training_seconds = checkpoint.get("training_seconds", 0.0)
        self.last_validated_step = checkpoint.get("last_validated_step")


def check_same_adaptation(saved: dict[str, Any], current: dict[str, Any]) -> None:
    """A checkpoint fits this run only with the same adapters on the same base weights."""
    saved_adapter, adapter = saved.get("adapter") or None, current.get("adapter") or None
    if bool(saved_adapter) != bool(adapter):
        raise CheckpointMismatchError(
            f"the checkpoint {'holds LoRA adapters' if saved_adapter else 'is a full fine-tune'} but this run "
            f"{'trains LoRA adapters' if adapter else 'is a full fine-tune'}; resume with "
            f"adapter={'lora' if saved_adapter else 'none'}")
    if not adapter:
        return
    if dict(saved_adapter) != dict(adapter):
        raise CheckpointMismatchError(f"the checkpoint's adapters are {dict(saved_adapter)}, this run's {dict(adapter)}; "
                                      f"resume with the same adapter settings")
    if saved["base"]["sha256"] != current["base"]["sha256"]:
        raise CheckpointMismatchError(
            f"the checkpoint's adapters were trained on the base weights {saved['base']['weights']} (sha256 "
            f"{saved['base']['sha256'][:16]}...), but this run loads {current['base']['weights']} (sha256 "
            f"{current['base']['sha256'][:16]}...); resume with the same model.weights")
