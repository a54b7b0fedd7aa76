"""``python -m gpt2_lightning VERB ...``: the ``gpt2`` command."""

from gpt2_lightning.apps.cli import command

command()
