from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from gpt2_lightning.backends import generation_plan, training_plan
from gpt2_lightning.data.datamodule import InstructionDataModule
from gpt2_lightning.devices import check_accelerator
from gpt2_lightning.errors import ConfigError
from gpt2_lightning.model.gpt import GPTModel
from gpt2_lightning.resources import cache_dir
from tests.conftest import REPO_ROOT, compose_train
from tests.test_model import TINY

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
    trainer = hydra.utils.instantiate(cfg.trainer, precision=training_plan("cpu").precision)
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

    monkeypatch.setenv("GPT2_LIGHTNING_CACHE", str(tmp_path))
    plan = training_plan("cpu", "auto", width=256)
    calibration = tmp_path / "calibration.json"
    measured = json.loads(calibration.read_text())
    [(key, entry)] = [(k, v) for k, v in measured.items() if "| train |" in k and "bfloat16" in v["screen"]]
    assert "| cpu | train | width 256 |" in key
    # fp32 races as it would train: its linears through the kernel measured fastest
    [kernels] = [v for k, v in measured.items()
                 if k.endswith("| train | width 256 | float32 vs onednn vs onednn-forward")]
    assert set(kernels["seconds"]) == {"float32", "onednn", "onednn-forward"}  # none dropped in a first round
    linears = "torch" if kernels["fastest"] == "float32" else kernels["fastest"]
    fp32 = "float32" if linears == "torch" else f"float32+{linears}"
    assert set(entry["screen"]) == {fp32, "bfloat16"} and fp32 in entry["seconds"]
    assert plan.precision == ("bf16-mixed" if entry["fastest"] == "bfloat16" else "32-true")
    assert entry["seconds"][entry["fastest"]] <= entry["seconds"][fp32]  # never slower than fp32
    assert plan.train.linears == (linears if plan.precision == "32-true" else "torch")
    assert f"-> {entry['fastest']}" in plan.measured["training precision"]  # the numbers behind the choice
    measured_at = calibration.stat().st_mtime_ns
    assert training_plan("cpu", "auto", width=256) == plan and calibration.stat().st_mtime_ns == measured_at
    generation = generation_plan("cpu", "auto", width=256)  # its own workload, measured apart
    [generate] = [v for k, v in json.loads(calibration.read_text()).items()
                  if "| generate | width 256 |" in k and "bfloat16" in v["screen"]]
    assert generation.generate.dtype == ("bfloat16" if generate["fastest"] == "bfloat16" else "float32")
    assert generation.generate == plan.generate and generation.train is None
    assert training_plan("cpu", "32-true", width=256).precision == "32-true"


def test_bf16_takes_the_gelu_form_measured_fastest_and_fp32_keeps_gpt2s_tanh_gelu(tmp_path, monkeypatch):
    import json

    import torch.nn.functional as F

    from gpt2_lightning.backends import prepare_for_training
    from gpt2_lightning.backends.machine import machine

    monkeypatch.setenv("GPT2_LIGHTNING_CACHE", str(tmp_path / "measured"))
    plan = training_plan("cpu", "bf16-mixed", width=64)
    [(key, race)] = [(k, v) for k, v in json.loads((tmp_path / "measured" / "calibration.json").read_text()).items()
                     if "| gelu " in k]
    assert key == f"{machine()} | cpu | gelu bfloat16 | width 64 | tanh vs erf"
    assert set(race["seconds"]) == {"tanh", "erf"} and plan.train.gelu == race["fastest"]
    assert plan.measured["training GELU"].endswith(f"-> {race['fastest']}")
    assert training_plan("cpu", "32-true", width=64).train.gelu == "tanh"  # fp32 computes GPT-2's own form
    for fastest, kernel in [("erf", F.gelu), ("tanh", None)]:  # what the machine's calibration found
        cache = tmp_path / fastest
        cache.mkdir()
        (cache / "calibration.json").write_text(json.dumps({key: {"fastest": fastest, "seconds": {}}}))
        monkeypatch.setenv("GPT2_LIGHTNING_CACHE", str(cache))
        plan = training_plan("cpu", "bf16-mixed", width=64)
        assert (plan.train.gelu, prepare_for_training(GPTModel(TINY), plan).gelu) == (fastest, kernel)
        assert f"GELU {fastest}" in plan.describe()


def test_attention_runs_as_matmuls_up_to_the_longest_length_measured_faster(tmp_path, monkeypatch):
    import json

    from gpt2_lightning.backends import prepare_for_training
    from gpt2_lightning.backends.machine import machine

    key = f"{machine()} | cpu | attention bfloat16 | {{}} tokens | width 64 | sdpa vs matmul".format
    monkeypatch.setenv("GPT2_LIGHTNING_CACHE", str(tmp_path / "measured"))
    plan = training_plan("cpu", "bf16-mixed", width=64)
    races = {k: v for k, v in json.loads((tmp_path / "measured" / "calibration.json").read_text()).items()
             if "| attention bfloat16 " in k}  # (generation may race its own dtype too)
    assert set(races[key(128)]["seconds"]) == {"sdpa", "matmul"}  # the shortest length first
    if races[key(128)]["fastest"] == "sdpa":  # then no longer one
        assert (plan.train.attention, list(races)) == ("sdpa", [key(128)])
    else:
        expected = ("matmul-short", 256) if races[key(256)]["fastest"] == "matmul" else ("matmul-short", 128)
        assert (plan.train.attention, plan.train.matmul_tokens) == expected
    assert plan.measured["training attention"].count("->") == len(races)

    def planned(fastest_at):  # what the machine's calibration found at 128 and then 256 tokens
        cache = tmp_path / "-".join(fastest_at)
        cache.mkdir()
        (cache / "calibration.json").write_text(json.dumps({
            key(tokens): {"fastest": fastest, "seconds": {}} for tokens, fastest in zip((128, 256), fastest_at)}))
        monkeypatch.setenv("GPT2_LIGHTNING_CACHE", str(cache))
        plan = training_plan("cpu", "bf16-mixed", width=64)
        return plan.train.attention, plan.train.matmul_tokens, prepare_for_training(GPTModel(TINY), plan).attention

    attention, tokens, kernel = planned(["matmul", "matmul"])
    assert (attention, tokens, kernel.keywords) == ("matmul-short", 256, {"dtype": torch.bfloat16, "max_tokens": 256})
    attention, tokens, kernel = planned(["matmul", "sdpa"])
    assert (attention, tokens, kernel.keywords["max_tokens"]) == ("matmul-short", 128, 128)
    assert "attention matmuls up to 128 tokens, then sdpa" in training_plan("cpu", "bf16-mixed", width=64).describe()
    assert planned(["sdpa"])[0::2] == ("sdpa", None)
    assert key(256) not in json.loads((tmp_path / "sdpa" / "calibration.json").read_text())  # never raced


def test_a_candidate_far_slower_in_the_first_round_never_runs_the_whole_workload():
    from gpt2_lightning.backends.cpu.calibrate import SCREEN_FACTOR, screened_race

    runs = []

    def candidate(name, first_round, whole):  # a run is its seconds, so the race's times are known
        def run_of(screen):
            def run():
                runs.append((name, screen))
                return first_round if screen else whole
            return run
        return run_of

    race = screened_race({"float32": candidate("float32", 1.0, 10.0),
                          "emulated": candidate("emulated", SCREEN_FACTOR * 1.01, 1.0),
                          "close": candidate("close", SCREEN_FACTOR * 0.99, 9.0)}, seconds_of=lambda run: run())
    first_round = [("float32", True), ("emulated", True), ("close", True)]
    assert runs == first_round * 2 + [("float32", False), ("close", False)] * 2  # each twice, in turns
    assert race.fastest == "close" and race.seconds == {"float32": 10.0, "close": 9.0}
    assert race.screen["emulated"] == SCREEN_FACTOR * 1.01
    assert "emulated out in the first round" in race.summary() and race.summary().endswith("-> close")
    # the baseline keeps a tie within 5%
    assert screened_race({"float32": candidate("a", 1.0, 1.0), "other": candidate("b", 1.0, 0.96)},
                         seconds_of=lambda run: run()).fastest == "float32"


def test_candidates_are_timed_in_turns_until_each_has_enough_runs():
    from gpt2_lightning.backends.cpu.calibrate import MIN_TIMED_SECONDS, fewest_seconds_in_turns

    order = []
    seconds = {"slow start": iter([0.03, 0.01, 0.01, 0.01, 0.01, 0.01]), "steady": iter([0.03] * 6)}

    def run_of(name):
        def run():
            order.append(name)
            return next(seconds[name])
        return run

    fewest = fewest_seconds_in_turns({name: run_of(name) for name in seconds}, seconds_of=lambda run: run())
    # a process's slow first run is one of the baseline's, not its time; each runs until its runs
    # add up to MIN_TIMED_SECONDS (at most 6 times), the two alternating while both need runs
    assert MIN_TIMED_SECONDS == 0.05 and fewest == {"slow start": 0.01, "steady": 0.03}
    assert order == ["slow start", "steady"] * 2 + ["slow start"]


def test_processes_started_apart_decide_alike_without_measuring(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2_LIGHTNING_CACHE", str(tmp_path))
    plan = training_plan("cpu", "auto", width=512, measure=False)
    assert (plan.precision, plan.train.linears, plan.generate.dtype, plan.measured) == ("32-true", "torch",
                                                                                       "float32", {})
    assert not (tmp_path / "calibration.json").exists()


def test_the_plan_is_saved_and_read_back_whole(tmp_path):
    import json

    from gpt2_lightning.backends import ExecutionPlan

    plan = training_plan("cpu", "bf16-mixed", width=64)
    path = plan.save(tmp_path)
    assert path == tmp_path / "plan.json" and ExecutionPlan.load(tmp_path) == plan == ExecutionPlan.load(path)
    assert plan.train.loss == "chunked"
    saved = json.loads(path.read_text())
    for workload in ("train", "generate"):  # as plans were saved before these choices were measured
        del saved[workload]["gelu"], saved[workload]["matmul_tokens"]
    path.write_text(json.dumps(saved))
    old = ExecutionPlan.load(path)
    assert (old.train.gelu, old.train.matmul_tokens, old.generate.matmul_tokens) == ("tanh", 256, 256)
    path.write_text("{}")
    with pytest.raises(ConfigError, match="plan.json: not a readable execution plan"):
        ExecutionPlan.load(path)
