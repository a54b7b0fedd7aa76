"""``Run``: a training run's directory, its layout in one place.

A run directory holds what ``gpt2 train`` left (``README.md``'s table): checkpoints, the
export, the test split, the answers and their scores, the execution plan, the loss plot and
the report. Every verb finds these through a ``Run``, and ``load_model`` loads a run's model
through it.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from gpt2_lightning.io import read_json
from gpt2_lightning.resources import PLAN_FILE, register_resolvers

if TYPE_CHECKING:
    from gpt2_lightning.backends import ExecutionPlan


class _Path:
    """A path inside the run directory, read as an attribute of a ``Run``."""

    def __init__(self, name: str, doc: str = ""):
        self.name, self.__doc__ = name, doc

    def __get__(self, run: Run | None, owner: type) -> Path:
        return self if run is None else run.path / self.name


class Run:
    """The run directory ``path`` (it need not exist yet: the training job creates its files)."""

    CONFIG = Path(".hydra") / "config.yaml"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and self.path.resolve() == other.path.resolve()

    def __hash__(self) -> int:
        return hash(self.path.resolve())

    @classmethod
    def of(cls, spec: str | os.PathLike) -> Run | None:
        """The run that ``spec`` is or lies in (a run directory, its export folder, one of its
        checkpoints), None for anything else (plain weights, a size name, a URL)."""
        path = Path(spec)
        for candidate in (path, path.parent, path.parent.parent):
            if (candidate / cls.CONFIG).is_file():
                return cls(candidate)
        return None

    # --- the layout (paths inside the run directory) -------------------------------------

    checkpoints = _Path("checkpoints")
    last_checkpoint = _Path("checkpoints/last.ckpt", "the whole training state, to resume from")
    export = _Path("export", "the run's own export (model.safetensors + config.json)")
    test_split = _Path("test-split.json", "the run's test records, as it split them")
    responses = _Path("responses.json", "the test records with the model's answers")
    scores = _Path("eval.json", "test loss, exact match, ROUGE-L, the judge's")
    benchmarks = _Path("benchmarks.json", "lm-evaluation-harness results (gpt2 eval --tasks)")
    plan = _Path(PLAN_FILE, "the execution plan the run trained by")
    tensorboard = _Path("tensorboard")
    loss_plot = _Path("loss.png")
    report = _Path("report.html", "the run on one page: settings, losses, scores, every answer")
    log = _Path("train.log")
    progress = _Path("progress.json", "what the training job has finished (see apps/progress.py)")
    reference_logprobs = _Path("reference-logprobs.npz", "preference tuning: the reference model's log-probabilities")

    @property
    def best_checkpoints(self) -> list[Path]:
        """The best-by-validation checkpoints on disk (one, unless a run left more)."""
        return sorted(self.checkpoints.glob("best-*.ckpt"))

    @property
    def delivered_checkpoint(self) -> Path | None:
        """The checkpoint the run delivers: its best by validation, else its last; None if neither."""
        return next((c for c in (*self.best_checkpoints, self.last_checkpoint) if c.is_file()), None)

    # --- what it holds ----------------------------------------------------------------

    @cached_property
    def config(self) -> DictConfig | None:
        """The run's composed config (``.hydra/config.yaml``), None for a folder without one."""
        if not (self.path / self.CONFIG).is_file():
            return None
        register_resolvers()
        return OmegaConf.load(self.path / self.CONFIG)

    @property
    def name(self) -> str:
        """What the run is, in a few words: its experiment and model (``quickstart-mini``), else
        its folder's name. A run that started from another run's weights (DPO after SFT) names that
        run in place of the model (``dpo-quickstart-quickstart-mini``)."""
        model = self.config.model.get("name") if self.config is not None and "model" in self.config else None
        if self.origin is not None:
            model = self.origin.name
        return "-".join(part for part in (self.choice("experiment"), model) if part) or self.path.name

    @property
    def origin(self) -> Run | None:
        """The run whose weights this run started from (``model.weights`` inside another run), if any."""
        weights = self.config.model.get("weights") if self.config is not None and "model" in self.config else None
        origin = Run.of(weights) if weights else None
        return origin if origin != self else None

    def overrides(self) -> list[str]:
        """What the run was given on its command line (``.hydra/overrides.yaml``), none for a folder without it."""
        path = self.path / self.CONFIG.parent / "overrides.yaml"
        return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []

    def choice(self, group: str) -> str | None:
        """The config group's choice the run was composed with (``experiment``: ``quickstart``), if any."""
        hydra = self.path / self.CONFIG.parent / "hydra.yaml"
        if not hydra.is_file():
            return None
        return OmegaConf.load(hydra).hydra.runtime.choices.get(group)

    def read_scores(self) -> dict[str, Any]:
        """``eval.json``, or nothing where the run has none (yet)."""
        scores = read_json(self.scores, missing={}, invalid={})
        return scores if isinstance(scores, dict) else {}

    def benchmark_scores(self) -> dict[str, float]:
        """Each benchmark score in ``benchmarks.json``, as ``"task metric"`` (``"hellaswag acc_norm"``)."""
        results = read_json(self.benchmarks, missing={}, invalid={})
        return benchmark_scores(results.get("results", {}) if isinstance(results, dict) else {})

    def execution_plan(self) -> ExecutionPlan | None:
        # Imported here: the backends load torch (1.0 s), which `gpt2 plot`, reading a run's
        # files alone, never needs.
        from gpt2_lightning.backends import ExecutionPlan

        return ExecutionPlan.load(self.plan) if self.plan.is_file() else None

    def test_records(self) -> list[dict]:
        """The test records the run answers: the split it saved, else (runs of older versions)
        split again from its saved data config."""
        from gpt2_lightning.data.records import load_records

        if self.test_split.is_file():
            return load_records(self.test_split)
        return self.split_records("test")

    def split_records(self, split: str) -> list[dict]:
        """The records of the run's ``split`` (``train``, ``val``, ``test``), read and split again as
        its saved data config says."""
        if self.config is None:
            raise FileNotFoundError(f"{self.path} is not a run directory (no {self.CONFIG}); give --records")
        import hydra

        datamodule = hydra.utils.instantiate(self.config.data)
        datamodule.setup()
        return datamodule.datasets[split].records


def benchmark_scores(results: dict) -> dict[str, float]:
    """lm-eval's ``results`` (task -> ``{"acc,none": ..., "acc_stderr,none": ...}``) as
    ``"task metric"`` -> score, the filter named where it is not ``none``, without the errors."""
    scores = {}
    for task, metrics in sorted(results.items()):
        for key, value in (metrics.items() if isinstance(metrics, dict) else ()):
            metric, _, kind = key.partition(",")
            if kind and "_stderr" not in metric and isinstance(value, (int, float)) and not isinstance(value, bool):
                scores[f"{task} {metric}" + ("" if kind == "none" else f" ({kind})")] = value
    return scores
