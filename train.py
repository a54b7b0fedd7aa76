"""Fine-tune GPT-2 on instruction data: python train.py model=gpt2-medium trainer.devices=1

Every setting lives in conf/ (see README.md); any of them can be overridden on the command line.
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))

from gpt2_lightning.cli import exit_on_user_error  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    from gpt2_lightning.training import run

    with exit_on_user_error():
        return run(cfg)


if __name__ == "__main__":
    main()
