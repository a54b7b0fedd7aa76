"""A callback for the DDP tests: each process writes down the execution plan it trains by."""

import json
import sys
from pathlib import Path

import lightning as L


class PlanOfEachRank(L.Callback):
    def __init__(self, folder: str):
        self.folder = Path(folder)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        handed = [arg for arg in sys.argv if arg.startswith("plan=")]
        (self.folder / f"plan-rank{trainer.global_rank}.json").write_text(
            json.dumps({"plan": pl_module.plan.to_dict(), "handed": handed}))
