"""The command line of the training job (``gpt2 train``, ``python train.py``): Hydra overrides
composed and checked, a resumed run put back in its own directory, one log. It imports nothing
heavy: a config that does not compose is one line within a second; the job itself
(``apps/job.py``) loads Lightning only once the config holds.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from gpt2_lightning.apps.common import collector_paused, escaped, exit_on_user_error, override_key, survive_a_closed_console
from gpt2_lightning.resources import config_dir, register_resolvers


def main(overrides: Sequence[str] | None = None) -> None:
    """Compose ``conf/train.yaml`` with Hydra from ``overrides`` (default: the command line's
    arguments, as ``python train.py`` passes them) and run the job."""
    register_resolvers()
    args = resume_in_its_run(list(sys.argv[1:] if overrides is None else overrides))
    check_composes(args)
    sys.argv = [sys.argv[0], *args]  # Hydra reads its arguments from sys.argv
    hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train.yaml")(_job)()


def check_composes(args: list[str]) -> None:
    """A config that cannot be composed (an unknown choice, a mistyped key) is one line and
    exit code 2 here, not Hydra's report. Sweeps and Hydra's own flags are Hydra's to check."""
    if any(arg.startswith("-") for arg in args):
        return
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            compose("train.yaml", overrides=args)
    except HydraException as err:
        message = str(err).split("\nConfig search path:")[0]
        message = re.sub(r"\.?\n+", "; ", re.sub(r"\n\t", ", ", re.sub(r":\n\t", ": ", message)))
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    finally:
        GlobalHydra.instance().clear()


def resume_in_its_run(args: list[str]) -> list[str]:
    """For ``ckpt_path=<run>/checkpoints/<file>.ckpt``: that run's own overrides (those given now
    win) and its directory as Hydra's, so that resuming goes on with the same run, in the same
    place: its config and data, best checkpoints and scores, TensorBoard run and log. A run
    directory given by the user (or a sweep) is left as it is."""
    ckpt = next((a.split("=", 1)[1].strip("'\"") for a in args if a.startswith("ckpt_path=")), None)
    if ckpt in (None, "null", "auto") or {"-m", "--multirun"} & set(args) or \
            any(a.startswith("hydra.run.dir=") for a in args):
        return args
    run_dir = Path(ckpt).resolve().parent.parent
    saved = run_dir / ".hydra" / "overrides.yaml"
    if Path(ckpt).parent.name != "checkpoints" or not saved.is_file():
        return args  # not a checkpoint of a run of this project
    given = {override_key(a) for a in args} | {"ckpt_path", "hydra.run.dir"}
    original = [o for o in OmegaConf.load(saved) if override_key(o) not in given]
    return [*original, *args, f"hydra.run.dir='{escaped(run_dir)}'"]


def _job(cfg: DictConfig) -> float | None:
    survive_a_closed_console()
    with collector_paused():
        from gpt2_lightning.apps.job import run  # Lightning, which sets up its loggers on import: before one_log()

    one_log()
    try:
        with exit_on_user_error():
            return run(cfg)
    except SystemExit as stop:
        if stop.code == 2:  # a user error, said on the console and in train.log
            forget_a_run_that_never_started(Path(cfg.paths.output_dir))
        raise


def forget_a_run_that_never_started(run_dir: Path) -> None:
    """Remove the run directory Hydra made for this start when the start failed before anything
    but its config and log were written, so that failed starts leave no directories behind. A
    directory the user named (``hydra.run.dir``) or a sweep's stays, the error in its ``train.log``."""
    hydra_cfg = HydraConfig.get()
    named = any(override_key(o) == "hydra.run.dir" for o in hydra_cfg.overrides.hydra)
    if hydra_cfg.mode != RunMode.RUN or named or not run_dir.is_dir() or \
            {p.name for p in run_dir.iterdir()} - {".hydra", "train.log"}:
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir:
            handler.close()
            logging.getLogger().removeHandler(handler)
    shutil.rmtree(run_dir, ignore_errors=True)
    for folder in run_dir.resolve().parents:  # outputs/<date>, outputs: where this was their only run
        if folder == Path.cwd().resolve():
            break
        try:
            folder.rmdir()
        except OSError:
            break


# Lightning's messages that say nothing about this run.
_NOISE = ("💡 Tip:",)
_HARMLESS_WARNINGS = (r".*isinstance\(treespec, LeafSpec\).*",  # inside Lightning, torch >= 2.9
                      r"Precision .* is not supported by the model summary.*",
                      # The batch sampler resumes mid-epoch itself (data/sampler.py), which Lightning cannot see.
                      r"You're resuming from a checkpoint that ended before the epoch ended and your dataloader is"
                      r" not resumable.*")


def one_log() -> None:
    """One line per event, in one format, in the console and in ``train.log`` alike: Lightning's
    own loggers and Python's warnings go through the handlers Hydra set up, without Lightning's
    advertising tips and warnings known to be harmless."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: not str(record.msg).startswith(_NOISE))
    for message in _HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    logging.captureWarnings(True)
