from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf

from gpt2_lightning.data.datamodule import InstructionDataModule
from gpt2_lightning.devices import check_accelerator, resolve_precision
from gpt2_lightning.errors import ConfigError
from gpt2_lightning.resources import cache_dir
from tests.conftest import REPO_ROOT, compose_train

CONF = REPO_ROOT / "conf"


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["model", "data", "trainer", "logger", "callbacks", "experiment", "debug",
                                   "optimizer", "hparams_search"])
def test_every_choice_of_every_group_composes(tmp_path, group):
    for choice in choices(group):
        cfg = compose_train(tmp_path, f"{group}={choice}")
        OmegaConf.resolve(cfg)  # every interpolation resolves
        assert cfg.paths.output_dir == str(tmp_path)


def test_default_config_instantiates_the_data_module_and_a_cpu_trainer(tmp_path):
    cfg = compose_train(tmp_path, "trainer=cpu")
    datamodule = hydra.utils.instantiate(cfg.data)
    assert isinstance(datamodule, InstructionDataModule)
    assert datamodule.data_file() == cache_dir() / "data" / "instruction-data.json"
    assert (datamodule.batch_size, datamodule.split, datamodule.fields.output) == (8, [0.85, 0.05, 0.10], "output")
    assert cfg.trainer.precision == "auto"  # resolved by the job, as below
    trainer = hydra.utils.instantiate(cfg.trainer, precision=resolve_precision("auto", "cpu"))
    assert trainer.max_epochs == 2 and trainer.accelerator.__class__.__name__ == "CPUAccelerator"


def test_reference_experiment_is_the_reference_run(tmp_path):
    cfg = compose_train(tmp_path, "experiment=reference")
    assert (cfg.model.name, cfg.model.pretrained) == ("gpt2-medium", True)
    assert (cfg.trainer.max_epochs, cfg.data.batch_size) == (2, 8)
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (5e-5, 0.1)


def test_quickstart_is_offline(tmp_path):
    cfg = compose_train(tmp_path, "experiment=quickstart")
    assert cfg.model.pretrained is False and cfg.data.url is None
    assert Path(cfg.data.path).is_file()


def test_unavailable_devices_are_named():
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU is available here; use trainer=cpu"):
            check_accelerator("gpu")
    with pytest.raises(ConfigError, match="unknown trainer.accelerator='npu'"):
        check_accelerator("npu")


def test_more_cpu_processes_than_cores_are_warned_about(caplog):
    import os

    from gpt2_lightning.devices import check_trainer

    cores = os.cpu_count() or 1
    with caplog.at_level("WARNING"):
        check_trainer({"accelerator": "cpu", "devices": cores})
        assert caplog.records == []
        check_trainer({"accelerator": "cpu", "devices": cores + 1})
    assert f"starts {cores + 1} training processes on {cores} CPU cores" in caplog.text


def test_auto_precision_is_measured_once_per_machine_and_never_slower_than_fp32(tmp_path, monkeypatch):
    import json

    import torch

    from gpt2_lightning.calibrate import fastest_dtype
    from gpt2_lightning.devices import inference_dtype

    monkeypatch.setenv("GPT2_LIGHTNING_CACHE", str(tmp_path))
    chosen = resolve_precision("auto", "cpu", width=256)
    calibration = tmp_path / "calibration.json"
    measured = json.loads(calibration.read_text())
    [(key, entry)] = [(k, v) for k, v in measured.items() if "bfloat16" in v["seconds"]]
    assert "| cpu | train | width 256 |" in key
    # fp32 races as it would train: through oneDNN where that measured faster than F.linear
    [onednn] = [v for k, v in measured.items() if k.endswith("| train | width 256 | float32 vs onednn")]
    fp32 = "float32+onednn" if onednn["fastest"] == "onednn" else "float32"
    assert set(entry["seconds"]) == {fp32, "bfloat16"}
    assert chosen == ("bf16-mixed" if entry["fastest"] == "bfloat16" else "32-true")
    assert entry["seconds"][entry["fastest"]] <= entry["seconds"][fp32]  # never slower than fp32
    measured_at = calibration.stat().st_mtime_ns
    assert resolve_precision("auto", "cpu", width=256) == chosen and calibration.stat().st_mtime_ns == measured_at
    generation = inference_dtype("cpu", "auto", width=256)  # its own workload, measured apart
    [generate] = [v for k, v in json.loads(calibration.read_text()).items()
                  if "| generate | width 256 |" in k and "bfloat16" in v["seconds"]]
    assert generation == (torch.bfloat16 if generate["fastest"] == "bfloat16" else torch.float32)
    assert fastest_dtype("cpu", "generate", 256) == generation and resolve_precision("32-true", "cpu") == "32-true"


def test_processes_of_one_run_agree_on_the_auto_precision(tmp_path, monkeypatch):
    import torch

    from gpt2_lightning.calibrate import fastest_dtype
    from gpt2_lightning.devices import AUTO_PRECISION_VARIABLE

    monkeypatch.setenv("GPT2_LIGHTNING_CACHE", str(tmp_path))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    first = resolve_precision("auto", "cpu", width=256)  # the process that launches the others
    assert __import__("os").environ[AUTO_PRECISION_VARIABLE] == first
    monkeypatch.setenv("WORLD_SIZE", "2")  # a process it launched inherits its choice
    monkeypatch.setenv(AUTO_PRECISION_VARIABLE, "32-true")
    assert resolve_precision("auto", "cpu", width=256) == "32-true"
    monkeypatch.delenv(AUTO_PRECISION_VARIABLE)  # processes started apart: one fixed choice, no measuring
    assert fastest_dtype("cpu", "train", 512) == torch.float32
    assert "width 512" not in (tmp_path / "calibration.json").read_text()
