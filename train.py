"""Fine-tune GPT-2 on instruction data: python train.py model=gpt2-medium trainer.devices=1

The same as ``gpt2 train ...``. Every setting lives in conf/ (see README.md); any of them can
be overridden on the command line.
"""

from gpt2_lightning.apps.common import exit_without_teardown
from gpt2_lightning.apps.train import main

if __name__ == "__main__":
    exit_without_teardown(main)
