"""The training job behind ``gpt2 train`` and ``python train.py`` (``apps/train.py``, its command line):
fit -> best checkpoint -> test -> export -> respond -> evaluate -> plot, all in one run directory."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import hydra
import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from gpt2_lightning.apps.common import escaped, override_key
from gpt2_lightning.apps.progress import STAGES, Best, Progress
from gpt2_lightning.backends import ExecutionPlan, training_device, training_plan
from gpt2_lightning.backends.cpu.allocator import keep_freed_memory
from gpt2_lightning.data.datamodule import InstructionDataModule, PreferenceDataModule
from gpt2_lightning.data.prompts import DEFAULT_STYLE
from gpt2_lightning.devices import check_trainer
from gpt2_lightning.errors import ConfigError
from gpt2_lightning.evaluate.plot import plot_losses, read_scalars
from gpt2_lightning.evaluate.report import write_report
from gpt2_lightning.evaluate.scores import score_responses
from gpt2_lightning.export.folder import export_model
from gpt2_lightning.export.load import load_model, prompt_style_of, weights_source
from gpt2_lightning.export.run import Run
from gpt2_lightning.generation.placement import placed_for_generation
from gpt2_lightning.generation.respond import respond
from gpt2_lightning.generation.sampling import SamplingParams
from gpt2_lightning.io import remove_stale_temp_files, write_json
from gpt2_lightning.model.gpt import GPTConfig, GPTModel
from gpt2_lightning.model.lora import LoRAConfig, merge_lora
from gpt2_lightning.model.pretrained import WEIGHTS_FILE, base_identity, load_pretrained, model_with_weights
from gpt2_lightning.train.callbacks import GracefulStop
from gpt2_lightning.train.checkpoints import (
    merge_adapters,
    model_from_checkpoint,
    model_from_state_dict,
    read_checkpoint,
)
from gpt2_lightning.train.lightning_internals import validate_at_even_fractions
from gpt2_lightning.train.module import InstructionTuner
from gpt2_lightning.train.preference_tuner import PreferenceTuner
from gpt2_lightning.train.strategies import shards_parameters

log = logging.getLogger(__name__)

# Said on every resume, where the run's own checkpoints are expected in that folder.
_RESUME_WARNINGS = (r"Checkpoint directory .* exists and is not empty.*",)


def build_model(model_cfg: DictConfig, cache_dir: str | None, resuming: bool,
                adapter: dict | None = None) -> tuple[GPTModel, dict | None]:
    """The GPT-2 to fine-tune, and for LoRA the identity of its base weights: ``weights`` when
    given (whose shape a resumed run's checkpoint has too), else OpenAI's weights of the size when
    ``pretrained`` (unless a checkpoint will overwrite them anyway; LoRA checkpoints do not hold
    them), else random initialisation of the configured shape. Given weights are never ignored."""
    overrides = OmegaConf.to_container(model_cfg.config, resolve=True) if model_cfg.config else {}
    spec = model_cfg.weights or model_cfg.name
    if adapter:
        if not (model_cfg.pretrained or model_cfg.weights):
            raise ConfigError("adapter=lora adapts pretrained weights: set model.pretrained=true or model.weights=...")
        base = base_identity(adaptable_weights(spec), cache_dir)
        return load_pretrained(base["path"], **overrides), base
    if model_cfg.weights:  # loaded when resuming too: the shape is the weights'
        return given_weights(model_cfg.weights, cache_dir, overrides), None
    if model_cfg.pretrained and not resuming:
        return load_pretrained(spec, cache_dir=cache_dir, **overrides), None
    return GPTModel(GPTConfig.from_spec(model_cfg.name, overrides)), None


def adaptable_weights(spec: str) -> str:
    """The weights file LoRA adapters are trained on for ``spec``: a run's (or export folder's)
    ``model.safetensors``, else GPT-2 weights as given. A run with checkpoints alone has no such file."""
    kind, where = weights_source(spec)
    if kind == "export":
        return str(Path(where) / WEIGHTS_FILE)
    if kind == "checkpoint":
        raise ConfigError(f"adapter=lora adapts a weights file, and {spec} holds a training checkpoint ({where}); "
                          f"export it first (gpt2 export {spec} --format hf --out DIR) and give model.weights=DIR")
    return spec


def given_weights(spec: str, cache_dir: str | None, overrides: dict) -> GPTModel:
    """The model of ``model.weights``: anything ``load_model`` takes (a run directory, its
    export, a ``.ckpt``, a Hugging Face folder) or GPT-2 weights (a file, a URL, a size name),
    with ``model.config``'s settings (a shape that differs from the weights' is an error naming
    the tensor)."""
    if weights_source(spec)[0] == "weights":
        return load_pretrained(spec, cache_dir=cache_dir, **overrides)
    model, _ = load_model(spec)
    return model_with_weights(GPTConfig(**{**model.cfg.to_dict(), **overrides}), model.state_dict(), spec)


def data_prompt_style(cfg: DictConfig) -> str:
    """``data.prompt_style``; when null, the style of the model the run starts from (``model.weights``:
    a run or its export keeps on being prompted as it was trained), else ``DEFAULT_STYLE``."""
    if cfg.data.get("prompt_style"):
        return cfg.data.prompt_style
    return prompt_style_of(cfg.model.weights) if cfg.model.get("weights") else DEFAULT_STYLE


def check_objective(cfg: DictConfig, datamodule: InstructionDataModule) -> None:
    """Preference tuning (``dpo``) trains a trained model on preference data, and only it does."""
    preferences = isinstance(datamodule, PreferenceDataModule)
    if cfg.get("dpo") and not preferences:
        raise ConfigError("dpo tunes on preferences: use data=preference (records with chosen and rejected answers), "
                          "or experiment=dpo")
    if cfg.get("dpo") and not (cfg.model.get("weights") or cfg.model.get("pretrained")):
        raise ConfigError("dpo tunes a trained model against itself: give model.weights=<an SFT run, or anything "
                          "load_model takes> (or model.pretrained=true for OpenAI's weights)")
    if preferences and not cfg.get("dpo"):
        raise ConfigError("data=preference pairs each record's chosen and rejected answers for dpo (experiment=dpo); "
                          "to fine-tune on the chosen answers, give the file to data=alpaca")


def adapter_settings(adapter_cfg: DictConfig | None) -> dict | None:
    """The LoRA settings of ``adapter=lora`` (checked), None for ``adapter=none``."""
    if adapter_cfg is None or adapter_cfg.name == "none":
        return None
    if adapter_cfg.name != "lora":
        raise ConfigError(f"unknown adapter {adapter_cfg.name!r}; use adapter=none or adapter=lora")
    settings = {k: v for k, v in OmegaConf.to_container(adapter_cfg, resolve=True).items() if k != "name"}
    try:
        return LoRAConfig(**settings).to_dict()
    except TypeError as err:
        raise ConfigError(f"adapter: {err}") from None


def instantiate_list(node: DictConfig | None) -> list:
    return [hydra.utils.instantiate(item) for item in (node or {}).values() if item and "_target_" in item]


def run(cfg: DictConfig, extra_callbacks: Sequence[L.Callback] = ()) -> float | None:
    """Run the job described by ``cfg``; return ``cfg.optimized_metric`` for sweepers.

    ``extra_callbacks`` join the configured ones (for notebooks and tests).
    """
    check_trainer(cfg.trainer)
    run_dir = Run(cfg.paths.output_dir)
    ckpt_path = checkpoint_to_resume(cfg.ckpt_path, run_dir)
    progress = Progress.read(run_dir) if ckpt_path is not None or cfg.ckpt_path == "auto" else Progress()
    train = cfg.train
    if ckpt_path is not None:
        for message in _RESUME_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        checkpoint = read_checkpoint(ckpt_path)  # a clear error for a missing, corrupt or foreign file, now
        if cfg.train and not progress.trained and training_is_complete(checkpoint, cfg.trainer):
            # A run of an older version, which kept no progress.json: finished as its last.ckpt says.
            progress.trained = {"global_step": checkpoint["global_step"], "epochs": checkpoint["epoch"],
                                "max_steps": cfg.trainer.get("max_steps", -1), "max_epochs": cfg.trainer.get("max_epochs")}
            progress.done = [stage for stage in STAGES if cfg[stage]]
    if train and progress.training_finished(cfg.trainer):
        left = [stage for stage in STAGES if cfg[stage] and stage not in progress.done]
        if not left:
            log.warning("the run in %s is complete (step %d; trainer.max_epochs=%s, trainer.max_steps=%s): nothing "
                        "to resume, nothing changed; to train longer, resume with a larger trainer.max_epochs",
                        run_dir.path, progress.trained["global_step"], cfg.trainer.max_epochs, cfg.trainer.max_steps)
            return None
        log.info("the run in %s has trained (step %d); what is left: %s", run_dir.path,
                 progress.trained["global_step"], ", ".join(left))
        train = False
    if train and ckpt_path is None:  # a fresh start: nothing of an earlier run in this directory counts
        progress = Progress()
        if rank_zero_only.rank == 0:
            run_dir.progress.unlink(missing_ok=True)
    keep_freed_memory()
    L.seed_everything(cfg.seed, workers=True)
    if rank_zero_only.rank == 0:  # before anything writes; the other processes start later
        for stale in remove_stale_temp_files(run_dir.path):
            log.info("removed %s, left by a write that was killed", stale)

    datamodule: InstructionDataModule = hydra.utils.instantiate(cfg.data, prompt_style=data_prompt_style(cfg))
    check_objective(cfg, datamodule)
    datamodule.prepare_data()  # bad data fails here, before a model is built or downloaded
    datamodule.setup()
    if rank_zero_only.rank == 0:  # what `gpt2 respond RUN` answers, wherever the data lives by then
        write_json(run_dir.test_split, datamodule.datasets["test"].records)
    adapter = adapter_settings(cfg.get("adapter"))
    model, base = build_model(cfg.model, cfg.paths.cache_dir, resuming=ckpt_path is not None, adapter=adapter)
    if datamodule.max_length is None:
        datamodule.max_length = model.cfg.context_length
    plan = execution_plan(cfg, run_dir, model.cfg.emb_dim)
    tuner_class, objective = InstructionTuner, {}
    if cfg.get("dpo"):
        tuner_class = PreferenceTuner
        objective = {**OmegaConf.to_container(cfg.dpo, resolve=True), "reference_file": str(run_dir.reference_logprobs)}
    tuner = tuner_class(model.cfg.to_dict(), prompt_style=datamodule.prompt_style,
                        compile=cfg.model.compile, adapter=adapter, base=base, model=model, plan=plan,
                        **OmegaConf.to_container(cfg.optimizer, resolve=True), **objective)
    callbacks = [*instantiate_list(cfg.get("callbacks")), *extra_callbacks]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, precision=plan.precision,
                                                 logger=instantiate_list(cfg.get("logger")) or False)
    if train:
        check_validation_interval(trainer, datamodule)
        validate_at_even_fractions(trainer)
    if adapter and shards_parameters(trainer.strategy):
        raise ConfigError("adapter=lora trains on one process or with DDP; FSDP would shard the frozen base for nothing")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model: %s, %.1fM parameters (%.2fM trainable%s), precision %s", cfg.model.weights or cfg.model.name,
             model.num_parameters() / 1e6, trainable / 1e6, ", LoRA adapters" if adapter else "", plan.precision)

    if train:
        try:
            trainer.fit(tuner, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SIGTERMException:  # Ctrl-C or SIGTERM: GracefulStop saved last.ckpt
            stop = next((cb for cb in callbacks if isinstance(cb, GracefulStop) and cb.signal), None)
            raise SystemExit(128 + (stop.signal if stop else signal.SIGTERM)) from None
        validate_the_last_step(trainer, tuner, datamodule)
        best = best_checkpoint(trainer)
        if trainer.is_global_zero:
            remove_other_best_checkpoints(run_dir, best)
            progress.finish_training(run_dir, trainer.global_step, completed_epochs(trainer), cfg.trainer, best,
                                     tuner.training_seconds)
    else:
        best = progress.best(run_dir) if progress.trained else best_checkpoint(trainer)
    test = cfg.test and "test" not in progress.done
    if test:  # the best weights (as the strategy lays them out), else the last
        trainer.test(tuner, datamodule=datamodule, ckpt_path=str(best.path) if best else None, weights_only=True)
    metrics = {**progress.metrics, **{k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}}
    if test and trainer.is_global_zero:
        progress.finish(run_dir, "test", {k: v for k, v in metrics.items() if k.startswith("test_")})

    model = delivered_model(trainer, tuner, best)  # every process: gathering may be a collective
    if trainer.is_global_zero:
        finish_run(cfg, model, plan, datamodule, run_dir, metrics, best, progress)
        if train:  # once, as the run trains: a resume that only finishes its last stages leaves TensorBoard as it was
            log_hparams(trainer, cfg, run_dir, plan, {**metrics, **({f"best_{best.monitor}": best.score} if best else {})})
    return best.score if best is not None and best.monitor == cfg.optimized_metric else metrics.get(cfg.optimized_metric)


def execution_plan(cfg: DictConfig, run_dir: Run, width: int) -> ExecutionPlan:
    """The run's execution plan, made once: ``cfg.plan`` when given (a saved ``plan.json``: the
    processes this job starts for DDP are handed its own), else decided here and, on rank zero,
    logged and saved as the run's ``plan.json``. Processes started apart (torchrun, SLURM) decide
    without measuring, so that they decide alike."""
    if cfg.get("plan"):
        return ExecutionPlan.load(cfg.plan)
    started_apart = int(os.environ.get("WORLD_SIZE", "1")) > 1
    plan = training_plan(training_device(str(cfg.trainer.accelerator)), str(cfg.trainer.precision), width,
                         measure=not started_apart)
    if rank_zero_only.rank == 0:
        log.info("execution plan: %s", plan.describe())
        path = plan.save(run_dir.path)
        # Lightning starts the other DDP processes with this process's arguments: they take this plan.
        sys.argv.append(f"plan='{escaped(path)}'")
    return plan


def completed_epochs(trainer: L.Trainer) -> int:
    """The epochs trained whole: not Lightning's ``current_epoch``, which counts the epoch a
    ``max_steps`` stop fell in as done."""
    steps_per_epoch = max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))
    return trainer.global_step // steps_per_epoch


def training_is_complete(checkpoint: dict, trainer_cfg: DictConfig) -> bool:
    """Whether the run that saved ``checkpoint`` already reached ``trainer.max_steps`` or
    ``trainer.max_epochs`` (as they are set now: raising one continues a finished run)."""
    epochs_done = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}) \
        .get("total", {}).get("completed", 0)
    max_steps, max_epochs = trainer_cfg.get("max_steps", -1), trainer_cfg.get("max_epochs")
    return (max_steps is not None and max_steps >= 0 and checkpoint.get("global_step", 0) >= max_steps) or \
        (max_epochs is not None and max_epochs >= 0 and epochs_done >= max_epochs)


def checkpoint_to_resume(ckpt_path: str | None, run_dir: Run) -> str | None:
    """``ckpt_path`` as given, or for ``auto`` the run directory's own ``last.ckpt`` when it
    has one (a fresh start when not: for schedulers that restart a job as it was)."""
    if ckpt_path != "auto":
        return ckpt_path
    last = run_dir.last_checkpoint
    if last.is_file():
        log.info("ckpt_path=auto: resuming from %s", last)
        return str(last)
    log.info("ckpt_path=auto: no %s yet, starting fresh", last)
    return None


def check_validation_interval(trainer: L.Trainer, datamodule: InstructionDataModule) -> None:
    """A validation every N batches needs N batches in an epoch (Lightning says so only from
    deep inside ``fit``)."""
    interval, limit = trainer.val_check_interval, trainer.limit_train_batches
    if not isinstance(interval, int) or trainer.check_val_every_n_epoch is None:
        return
    batches = len(datamodule.train_dataloader())
    batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    if interval > batches:
        raise ConfigError(f"trainer.val_check_interval={interval} is more than the {batches} training batches of an "
                          f"epoch: give at most {batches}, a fraction of an epoch (0.5), or "
                          "trainer.check_val_every_n_epoch=null to count batches across epochs")


def validate_the_last_step(trainer: L.Trainer, tuner: InstructionTuner, datamodule: InstructionDataModule) -> None:
    """A run that stopped between two validations (``trainer.max_steps``) is validated at its
    last step, and that step's weights become the best checkpoint where they score better: the
    best is chosen over the whole run, never from before its last steps."""
    if (tuner.last_validated_step in (None, trainer.global_step) or trainer.limit_val_batches == 0
            or not len(datamodule.datasets["val"])):
        return  # validated at the last step already, or never configured to validate
    trainer.validate(tuner, datamodule=datamodule, verbose=False)
    callback = trainer.checkpoint_callback
    score = trainer.callback_metrics.get(callback.monitor) if callback is not None and callback.monitor else None
    if score is None:
        return
    best = callback.best_model_score
    if best is None or (score < best if callback.mode == "min" else score > best):
        path = callback.format_checkpoint_name({"epoch": trainer.current_epoch, "step": trainer.global_step,
                                                callback.monitor: score})
        trainer.save_checkpoint(path, weights_only=callback.save_weights_only)
        callback.best_model_path, callback.best_model_score = path, score
        log.info("validated the last step (%d): %s=%.4f, the best so far", trainer.global_step, callback.monitor,
                 float(score))


def best_checkpoint(trainer: L.Trainer) -> Best | None:
    """The best-by-validation checkpoint the trainer's checkpoint callback chose, when there is one."""
    callback = trainer.checkpoint_callback
    if callback is None or callback.best_model_score is None or not Path(callback.best_model_path).is_file():
        return None  # no checkpoint chosen by a metric (e.g. callbacks=none): the final weights are used
    log.info("best checkpoint: %s (%s=%.4f)", callback.best_model_path, callback.monitor,
             float(callback.best_model_score))
    return Best(Path(callback.best_model_path), float(callback.best_model_score), callback.monitor)


def remove_other_best_checkpoints(run_dir: Run, best: Best | None) -> None:
    """Keep one best checkpoint: a resumed run's callback does not know the best files that the
    run's first part left (each as large as the weights)."""
    if best is None:
        return
    for path in run_dir.best_checkpoints:
        if path.resolve() != best.path.resolve():
            path.unlink()
            log.info("removed %s: %s is the run's best checkpoint", path.name, best.path.name)


def delivered_model(trainer: L.Trainer, tuner: InstructionTuner, best: Best | None) -> GPTModel | None:
    """The weights the run delivers (the best checkpoint's, else the final ones), whole, on global
    rank zero; None on the other processes. Every process must call this: where the strategy
    shards the parameters (FSDP), gathering them is a collective. A LoRA run's adapters are
    merged into the base it holds already (loading the base again would double its memory)."""
    if best is not None and tuner.hparams.adapter:
        if not trainer.is_global_zero:
            return None
        return merge_adapters(tuner.model, read_checkpoint(best.path)["state_dict"], str(best.path))
    if best is not None:
        return model_from_checkpoint(best.path)[0] if trainer.is_global_zero else None
    if not shards_parameters(trainer.strategy):
        return merge_lora(tuner.model) if trainer.is_global_zero else None
    state = trainer.strategy.lightning_module_state_dict()
    return model_from_state_dict(tuner.model.cfg, state, "the final weights") if trainer.is_global_zero else None


# Settings every run's HParams row shows, beside those given on its command line.
HPARAMS = ("model.name", "model.weights", "adapter.name", "data.batch_size", "optimizer.lr", "optimizer.weight_decay",
           "optimizer.schedule", "trainer.max_epochs", "trainer.max_steps", "dpo.beta", "dpo.loss_type")
HP_METRICS = ("best_val_loss", "test_loss", "rouge_l", "exact_match")


def log_hparams(trainer: L.Trainer, cfg: DictConfig, run_dir: Run, plan: ExecutionPlan, metrics: dict) -> None:
    """The run's settings beside its final scores (``hp/best_val_loss``, ``hp/test_loss``,
    ``hp/rouge_l``, ...), for TensorBoard's HParams tab: runs of a sweep side by side."""
    loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
    scores = {**metrics, **run_dir.read_scores()}
    values = {f"hp/{k}": float(scores[k]) for k in HP_METRICS if isinstance(scores.get(k), (int, float))}
    if not loggers or not values:
        return
    params = {key: OmegaConf.select(cfg, key) for key in HPARAMS}
    for override in run_dir.overrides():
        key, value = override_key(override), override.partition("=")[2]
        selected = OmegaConf.select(cfg, key, default=None)
        params[key] = value if selected is None or OmegaConf.is_config(selected) else selected
    params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items() if v is not None}
    params["trainer.precision"] = plan.precision
    for logger in loggers:
        logger.log_hyperparams(params, values)
        logger.finalize("success")  # the writer Lightning closed after testing was opened again: close it too


def finish_run(cfg: DictConfig, model: GPTModel, plan: ExecutionPlan, datamodule: InstructionDataModule,
               run_dir: Run, metrics: dict[str, float], best: Best | None, progress: Progress) -> None:
    """Export, answer the test split, score, plot and report: the run directory's deliverables,
    each stage not done already (``progress``)."""
    style = datamodule.prompt_style
    if cfg.export and "export" not in progress.done:
        export_model(model, run_dir.export, style)
        progress.finish(run_dir, "export")
    if cfg.respond and "respond" not in progress.done:
        settings = OmegaConf.to_container(cfg.generation, resolve=True)
        batch_size = settings.pop("batch_size")
        model = placed_for_generation(model, plan)
        answered = respond(model, datamodule.datasets["test"].records, run_dir.responses,
                           style, SamplingParams(**settings, seed=cfg.seed), batch_size)
        scores = {**score_responses(answered),
                  **{k: metrics[k] for k in ("test_loss", "test_ppl") if k in metrics}}
        if best is not None:
            scores["best_checkpoint"] = best.path.name
            scores[f"best_{best.monitor}"] = best.score
        write_json(run_dir.scores, scores)
        progress.finish(run_dir, "respond")
        log.info("eval: %s", scores)
    if cfg.plot and "plot" not in progress.done and run_dir.tensorboard.is_dir():
        scalars = read_scalars(run_dir.tensorboard)
        if "train_loss" in scalars:
            log.info("loss plot: %s", plot_losses(run_dir.path, scalars=scalars))
            progress.finish(run_dir, "plot")
        else:
            log.warning("no loss plot: no train_loss was logged (the run trained fewer steps than "
                        "trainer.log_every_n_steps=%s)", cfg.trainer.log_every_n_steps)
    if cfg.report and "report" not in progress.done:
        log.info("report: %s", write_report(run_dir.path))
        progress.finish(run_dir, "report")


