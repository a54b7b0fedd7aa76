from pathlib import Path

import hydra
import pytest
import torch
from lightning.pytorch import Callback

from gpt2_lightning.apps.job import run
from gpt2_lightning.evaluate.plot import read_scalars
from gpt2_lightning.train.loss import masked_lm_loss
from gpt2_lightning.train.module import InstructionTuner
from tests.conftest import TINY_RUN, compose_train


class Recorder(Callback):
    """Records what a real Trainer did, step by step."""

    def __init__(self):
        self.first_step = None
        self.grad_norms = []
        self.batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches += 1
        if self.first_step is None:
            self.first_step = trainer.global_step

    def on_before_zero_grad(self, trainer, pl_module, optimizer):
        # Called before the next step's backward: the gradients the optimizer just used.
        grads = [p.grad.norm() for p in pl_module.parameters() if p.grad is not None]
        if grads:
            self.grad_norms.append(float(torch.linalg.vector_norm(torch.stack(grads))))


def test_loss_goes_down_and_tensorboard_has_the_scalars(tmp_path):
    cfg = compose_train(tmp_path, *TINY_RUN, "+trainer.overfit_batches=1", "trainer.max_epochs=30",
                        "trainer.log_every_n_steps=1", "trainer.val_check_interval=1.0",
                        "optimizer.lr=3e-3", "data.batch_size=4")
    best_val = run(cfg)
    scalars = read_scalars(tmp_path / "tensorboard")
    train = [v for _, v in scalars["train_loss"]]
    assert len(train) == 30
    assert train[-1] < 0.5 * train[0]
    assert {"val_loss", "val_ppl", "tokens_per_sec", "tokens_seen", "train_loss_epoch"} <= set(scalars)
    assert any(tag.startswith("lr-AdamW") for tag in scalars)
    assert best_val == pytest.approx(min(v for _, v in scalars["val_loss"]), rel=1e-5)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert len(list((tmp_path / "checkpoints").glob("best-*.ckpt"))) == 1


def test_resume_from_last_checkpoint_continues_at_the_same_step(tmp_path):
    run(compose_train(tmp_path / "a", *TINY_RUN, "trainer.max_steps=4", "trainer.val_check_interval=2"))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 4 and state["optimizer_states"][0]["state"]

    recorder = Recorder()
    run(compose_train(tmp_path / "b", *TINY_RUN, "trainer.max_steps=7", "trainer.val_check_interval=2",
                      f"ckpt_path={last}"), extra_callbacks=[recorder])
    assert recorder.first_step == 4 and recorder.batches == 3
    resumed = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 7
    assert resumed["lr_schedulers"][0]["last_epoch"] == 7


def test_gradient_clipping_bounds_the_gradient_norm(tmp_path):
    unclipped, clipped = Recorder(), Recorder()
    once = ("trainer.max_steps=3", "trainer.val_check_interval=1.0")  # validation zeroes the grads
    run(compose_train(tmp_path / "a", *TINY_RUN, *once), extra_callbacks=[unclipped])
    run(compose_train(tmp_path / "b", *TINY_RUN, *once, "trainer.gradient_clip_val=0.05"),
        extra_callbacks=[clipped])
    assert len(unclipped.grad_norms) == len(clipped.grad_norms) == 2
    assert min(unclipped.grad_norms) > 0.5
    assert max(clipped.grad_norms) == pytest.approx(0.05, rel=1e-3)


def test_gradient_accumulation_steps_once_per_n_batches(tmp_path):
    recorder = Recorder()
    run(compose_train(tmp_path, *TINY_RUN, "trainer.max_epochs=1", "trainer.accumulate_grad_batches=3",
                      "data.batch_size=4", "trainer.val_check_interval=1.0"), extra_callbacks=[recorder])
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert recorder.batches == 13  # 51 training records in batches of 4
    assert state["global_step"] == 5  # ceil(13 / 3) optimizer steps


def test_each_epoch_draws_a_new_order_of_batches(tmp_path):
    seen = {}

    class Order(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault(trainer.current_epoch, []).append(batch["input_ids"][:, 0].tolist())

    run(compose_train(tmp_path, *TINY_RUN, "trainer.max_epochs=2", "data.batch_size=4",
                      "trainer.val_check_interval=1.0"), extra_callbacks=[Order()])
    assert len(seen[0]) == len(seen[1]) == 13
    assert seen[0] != seen[1]


def test_without_callbacks_the_job_keeps_its_final_weights_and_finishes(tmp_path):
    no_callbacks = [arg for arg in TINY_RUN if not arg.startswith("callbacks")]
    cfg = compose_train(tmp_path, *no_callbacks, "callbacks=none", "trainer.max_epochs=1",
                        "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=0", "export=true")
    assert run(cfg) is None  # no val_loss was ever computed
    assert (tmp_path / "export" / "model.safetensors").is_file()


def test_scored_tokens_are_logged_beside_all_positions(tmp_path):
    cfg = compose_train(tmp_path, *TINY_RUN, "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
                        "data.batch_size=4")
    run(cfg)
    scalars = read_scalars(tmp_path / "tensorboard")
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup()
    train = datamodule.datasets["train"]
    scored = sum(length - 1 for length in train.lengths)  # every target but padding
    assert scalars["scored_tokens_seen"][-1][1] == scored
    assert scalars["tokens_seen"][-1][1] > scored  # padding counted there
    assert {"scored_tokens_per_sec", "tokens_per_sec"} <= set(scalars)


def test_reference_settings_drop_the_last_batch_and_decay_every_parameter(tmp_path):
    cfg = compose_train(tmp_path, *TINY_RUN, "trainer.max_steps=1", "data.drop_last=true",
                        "optimizer.decay_biases_and_norms=true", "data.batch_size=8")
    class Optimizer(Callback):
        def on_train_start(self, trainer, pl_module):
            self.groups = [(g["weight_decay"], len(g["params"])) for g in trainer.optimizers[0].param_groups]
            self.batches = len(trainer.train_dataloader)

    seen = Optimizer()
    run(cfg, extra_callbacks=[seen])
    n_params = len(list(InstructionTuner(dict(cfg.model.config)).model.parameters()))
    assert seen.groups == [(0.1, n_params), (0.0, 0)]
    assert seen.batches == 51 // 8  # 51 training records of the sample: the 3 left over are dropped


@pytest.mark.slow
def test_model_compile_compiles_the_training_loss_and_trains_as_eager(tmp_path):
    from torch._dynamo.utils import counters

    steps = (*TINY_RUN, "trainer.max_steps=2", "trainer.log_every_n_steps=1", "+trainer.limit_val_batches=0",
             "~callbacks.response_sample")
    run(compose_train(tmp_path / "eager", *steps))
    torch._dynamo.reset()
    counters.clear()

    class LossFunction(Callback):
        def on_train_end(self, trainer, pl_module):
            self.loss_fn = pl_module.loss_fn

    seen = LossFunction()
    run(compose_train(tmp_path / "compiled", *steps, "model.compile=true"), extra_callbacks=[seen])
    assert seen.loss_fn is not masked_lm_loss and counters["stats"]["calls_captured"] > 0
    eager = read_scalars(tmp_path / "eager" / "tensorboard")["train_loss"]
    compiled = read_scalars(tmp_path / "compiled" / "tensorboard")["train_loss"]
    assert [s for s, _ in compiled] == [s for s, _ in eager] == [0, 1]
    assert [v for _, v in compiled] == pytest.approx([v for _, v in eager], rel=1e-4)


def test_fp32_training_on_cpu_takes_the_linear_kernels_measured_fastest_and_trains_as_f_linear(tmp_path,
                                                                                                monkeypatch):
    import json

    from gpt2_lightning.backends.cpu.calibrate import CACHE_FILE
    from gpt2_lightning.backends.cpu.onednn import OneDNNLinear
    from gpt2_lightning.backends.machine import machine

    class Linears(Callback):
        def on_train_end(self, trainer, pl_module):
            self.gradients = [m.gradients for m in pl_module.model.modules() if isinstance(m, OneDNNLinear)]

    steps = (*TINY_RUN, "trainer.precision=32-true", "trainer.max_steps=3", "trainer.log_every_n_steps=1",
             "+trainer.limit_val_batches=0", "~callbacks.response_sample")
    measured = f"{machine()} | cpu | train | width 64 | float32 vs onednn vs onednn-forward"
    losses = {}
    gradients = {"onednn": "onednn", "onednn-forward": "torch"}
    for fastest in ("onednn", "onednn-forward", "float32"):  # what the machine's calibration found
        cache = tmp_path / fastest / "cache"
        cache.mkdir(parents=True)
        (cache / CACHE_FILE).write_text(json.dumps({measured: {"fastest": fastest, "seconds": {}}}))
        monkeypatch.setenv("GPT2_LIGHTNING_CACHE", str(cache))
        linears = Linears()
        run(compose_train(tmp_path / fastest, *steps), extra_callbacks=[linears])
        assert linears.gradients == ([gradients[fastest]] * (4 * 2 + 1) if fastest in gradients else [])
        losses[fastest] = [v for _, v in read_scalars(tmp_path / fastest / "tensorboard")["train_loss"]]
    assert len(losses["onednn"]) == 3
    assert losses["onednn"] == pytest.approx(losses["float32"], rel=1e-5)
    assert losses["onednn-forward"] == pytest.approx(losses["float32"], rel=1e-5)


class RecordSaves(Callback):
    """The name and global step of every checkpoint the run writes, through its real writer."""

    def __init__(self):
        self.saves = []

    def on_fit_start(self, trainer, pl_module):
        writer = trainer.strategy.checkpoint_io
        write = writer.save_checkpoint

        def save_checkpoint(checkpoint, path, storage_options=None):
            self.saves.append((Path(path).name, checkpoint["global_step"]))
            return write(checkpoint, path, storage_options)

        writer.save_checkpoint = save_checkpoint


def test_last_checkpoint_comes_at_the_first_validation_and_once_at_the_end(tmp_path):
    # 51 training records in batches of 8: 7 steps an epoch, validation after each epoch.
    recorder = RecordSaves()
    run(compose_train(tmp_path, *TINY_RUN, "trainer.max_epochs=2", "trainer.val_check_interval=1.0",
                      "data.batch_size=8"), extra_callbacks=[recorder])
    # At step 7 (the first validation, long before the 5-minute clock); the second validation
    # comes within 5 minutes of it, so last.ckpt waits for the end of training: written once.
    assert [step for name, step in recorder.saves if name == "last.ckpt"] == [7, 14]


class MinutePerStep(Callback):
    """The clock of ``LastCheckpoint`` (and of that module alone) moves one minute per training step."""

    def __init__(self, monkeypatch):
        import gpt2_lightning.train.callbacks as callbacks

        self.now = 0.0
        monkeypatch.setattr(callbacks, "time", self)

    def monotonic(self) -> float:
        return self.now

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.now += 60.0


def test_last_checkpoints_timed_saves_count_from_any_save_and_validations_do_not_add_any(tmp_path, monkeypatch):
    # 7 steps an epoch, a validation after each, 3 epochs, a minute a step: the 5-minute clock saves at
    # step 5 and then 5 steps after each save; the validations at 7 and 14 come 2 and 4 minutes after
    # one and add no write (each of them used to: they were 2 minutes apart, on a clock of their own).
    recorder = RecordSaves()
    run(compose_train(tmp_path, *TINY_RUN, "trainer.max_epochs=3", "trainer.val_check_interval=1.0",
                      "data.batch_size=8"), extra_callbacks=[recorder, MinutePerStep(monkeypatch)])
    assert [step for name, step in recorder.saves if name == "last.ckpt"] == [5, 10, 15, 20, 21]


def test_stale_temporary_files_of_killed_writes_are_removed_at_start(tmp_path):
    stale = [tmp_path / "checkpoints" / ".last.ckpt.k3j4h5ab.tmp", tmp_path / ".responses.json.x81kq2.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 4096)
    mine = tmp_path / "notes.tmp"
    mine.write_text("not ours")
    run(compose_train(tmp_path, *TINY_RUN, "trainer.max_steps=1"))
    assert [path.exists() for path in stale] == [False, False] and mine.read_text() == "not ours"


@pytest.mark.parametrize("given", ["export file", "export folder"])
def test_given_weights_are_the_runs_start_even_with_pretrained_false(tmp_path, tiny_export, given):
    # model=tiny has model.pretrained=false; the weights given must be used, never silently replaced.
    from gpt2_lightning.export.folder import load_export

    weights = tiny_export / "model.safetensors" if given == "export file" else tiny_export
    run(compose_train(tmp_path, *TINY_RUN, f"model.weights={weights}", "train=false", "export=true"))
    delivered, given_model = load_export(tmp_path / "export")[0], load_export(tiny_export)[0]
    for name, tensor in given_model.state_dict().items():
        assert torch.equal(delivered.state_dict()[name], tensor), name


def test_a_run_directory_or_its_checkpoint_as_model_weights_starts_from_its_weights(tmp_path):
    from gpt2_lightning.export.folder import load_export
    from gpt2_lightning.train.checkpoints import model_from_checkpoint

    first = tmp_path / "first"
    run(compose_train(first, *TINY_RUN, "trainer.max_steps=2", "export=true"))
    last = first / "checkpoints" / "last.ckpt"
    for name, weights, expected in (("from-run", first, load_export(first / "export")[0]),
                                    ("from-ckpt", last, model_from_checkpoint(last)[0])):
        again = tmp_path / name
        run(compose_train(again, *TINY_RUN, f"model.weights={weights}", "train=false", "export=true"))
        delivered = load_export(again / "export")[0]
        for key, tensor in expected.state_dict().items():
            assert torch.equal(delivered.state_dict()[key], tensor), (name, key)


def test_a_run_stopped_by_max_steps_is_validated_at_its_last_step_and_its_best_chosen_over_it(tmp_path):
    # 51 training records, batch 8: validations every 3 steps (at 3 and 6) of a 7-step run.
    run(compose_train(tmp_path, *TINY_RUN, "trainer.max_steps=7", "trainer.val_check_interval=3",
                      "optimizer.lr=0.002", "~callbacks.response_sample"))
    validated = read_scalars(tmp_path / "tensorboard")["val_loss"]
    assert len(validated) == 3 and validated[-1][0] > validated[-2][0]
    [best] = (tmp_path / "checkpoints").glob("best-*.ckpt")
    lowest = min(validated, key=lambda point: point[1])
    assert f"val{lowest[1]:.4f}" in best.name
    assert "step00007" in best.name  # this data's val loss falls at this lr: the last step is the best


class ValidationSteps(Callback):
    """The global step of every validation a run makes (its sanity check aside)."""

    def __init__(self):
        self.steps = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.steps.append(trainer.global_step)


def test_a_fractional_validation_interval_validates_each_epoch_at_its_end_and_no_more(tmp_path):
    # 51 training records, batch 8: 7 batches an epoch, validated every 3.5 of them: after batches 4
    # and 7 (Lightning alone: every int(3.5) = 3, at 3 and 6, and the job then validated the last step).
    validations = ValidationSteps()
    run(compose_train(tmp_path, *TINY_RUN, "trainer.max_epochs=2", "trainer.val_check_interval=0.5",
                      "~callbacks.response_sample"), extra_callbacks=[validations])
    assert validations.steps == [4, 7, 11, 14]
