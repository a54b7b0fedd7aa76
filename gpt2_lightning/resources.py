"""Where the project's files are: the Hydra configs and the sample data it ships, and the
user cache that downloads (data, weights) go to.

Installed from a wheel, the configs and the sample lie inside the package; in a source
checkout they are the repository's top-level ``conf/`` and ``data/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

from gpt2_lightning.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
CACHE_VARIABLE = "GPT2_LIGHTNING_CACHE"
# An execution plan's file (``ExecutionPlan.save``), in a run directory (``Run.plan``): named here,
# below both, so that reading a run's other files never loads the backends (and torch with them).
PLAN_FILE = "plan.json"


def _shipped(in_package: str, in_checkout: str) -> Path:
    bundled = PACKAGE_DIR / in_package
    return bundled if bundled.exists() else PACKAGE_DIR.parent / in_checkout


def config_dir() -> Path:
    """The folder of ``train.yaml`` and the config groups."""
    return _shipped("conf", "conf")


def sample_data() -> Path:
    """The 60-record sample of the quick start."""
    return _shipped("sample_data/sample.json", "data/sample.json")


def sample_preference_data() -> Path:
    """The same 60 instructions, each with its answer (chosen) and an impolite one (rejected): DPO offline."""
    return _shipped("sample_data/sample-preference.json", "data/sample-preference.json")


def cache_dir() -> Path:
    """``$GPT2_LIGHTNING_CACHE``, else ``$XDG_CACHE_HOME/gpt2-lightning``, else ``~/.cache/gpt2-lightning``."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "gpt2-lightning"


_LOCATIONS = {"cache_dir": cache_dir, "sample_data": sample_data, "sample_preference_data": sample_preference_data}


def _resolve(name: str) -> str:
    if name not in _LOCATIONS:
        raise ConfigError(f"unknown location ${{gpt2:{name}}}; use one of {', '.join(_LOCATIONS)}")
    return str(_LOCATIONS[name]())


def register_resolvers() -> None:
    """``${gpt2:cache_dir}``, ``${gpt2:sample_data}`` and ``${gpt2:sample_preference_data}`` in
    configs (``conf/paths``)."""
    OmegaConf.register_new_resolver("gpt2", _resolve, replace=True)
