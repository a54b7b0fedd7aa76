"""``python -m gpt2_lightning VERB ...``: the ``gpt2`` command."""

import sys

from gpt2_lightning.apps.cli import main

sys.exit(main())
