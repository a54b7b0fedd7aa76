"""What the training job has finished in a run directory (``progress.json``), so that resuming
the run does what is left of it and nothing again.

Training counts as finished when ``trainer.fit`` returned (not when it was interrupted), under
the step and epoch limits it had then: a later ``trainer.max_epochs`` or ``trainer.max_steps``
beyond them trains on. The stages after training (test, export, respond, plot, report) each count once
they are done, and the best checkpoint that training chose is kept with them, so that a run
killed during its last stages resumes those alone, with the best checkpoint it had.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from gpt2_lightning.export.run import Run
from gpt2_lightning.io import read_json, write_json

STAGES = ("test", "export", "respond", "plot", "report")


@dataclass(frozen=True)
class Best:
    """The checkpoint training chose by ``monitor``."""

    path: Path
    score: float
    monitor: str


@dataclass
class Progress:
    trained: dict | None = None
    """After training: ``global_step``, ``epochs``, ``seconds`` (in training steps, every part of
    a resumed run), the limits (``max_steps``, ``max_epochs``) and the best checkpoint
    (``best_checkpoint``, ``best_score``, ``monitor``)."""
    done: list[str] = field(default_factory=list)
    """The stages after training that finished."""
    metrics: dict[str, float] = field(default_factory=dict)
    """The test stage's metrics."""

    @classmethod
    def read(cls, run: Run) -> Progress:
        saved = read_json(run.progress, missing={}, invalid={})
        if not isinstance(saved, dict):
            return cls()
        return cls(saved.get("trained"), list(saved.get("done", [])), dict(saved.get("metrics", {})))

    def save(self, run: Run) -> None:
        write_json(run.progress, asdict(self))

    def training_finished(self, trainer: DictConfig) -> bool:
        """Whether training reached a limit of ``trainer`` (the settings now): raising or lifting
        ``max_steps`` or ``max_epochs`` past what was trained goes on with the run."""
        if not self.trained:
            return False
        max_steps, max_epochs = trainer.get("max_steps", -1), trainer.get("max_epochs")
        steps_left = max_steps is None or max_steps < 0 or max_steps > self.trained["global_step"]
        epochs_left = max_epochs is None or max_epochs < 0 or max_epochs > self.trained["epochs"]
        return not (steps_left and epochs_left)

    def best(self, run: Run) -> Best | None:
        """The best checkpoint training chose, where it is still on disk."""
        if not self.trained or not self.trained.get("best_checkpoint"):
            return None
        path = run.checkpoints / self.trained["best_checkpoint"]
        return Best(path, self.trained["best_score"], self.trained["monitor"]) if path.is_file() else None

    def finish_training(self, run: Run, global_step: int, epochs: int, trainer: DictConfig, best: Best | None,
                        seconds: float) -> None:
        self.trained = {"global_step": global_step, "epochs": epochs, "seconds": seconds,
                        "max_steps": trainer.get("max_steps", -1),
                        "max_epochs": trainer.get("max_epochs"),
                        "best_checkpoint": best.path.name if best else None,
                        "best_score": best.score if best else None, "monitor": best.monitor if best else None}
        self.done, self.metrics = [], {}
        self.save(run)

    def finish(self, run: Run, stage: str, metrics: dict[str, float] | None = None) -> None:
        if stage not in self.done:
            self.done.append(stage)
        self.metrics.update(metrics or {})
        self.save(run)
