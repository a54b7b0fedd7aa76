"""The Lightning internals this project relies on where no public API does the same: each is
used here alone, and ``tests/test_lightning_internals.py`` fails on a Lightning release that
changes one, instead of a run that breaks without a word.

- ``stop_after_this_batch``: Lightning's own SIGTERM flag, so that Ctrl-C ends training the way
  SIGTERM does (after the batch, as an interruption to resume from). The public
  ``trainer.should_stop`` ends the epoch as if it were complete, so a resumed run would skip
  the rest of it.
- ``ModelCheckpoint``'s private methods that ``LastCheckpoint`` overrides or calls
  (``CHECKPOINT_METHODS``): when to save ``last.ckpt`` is decided by the callback that
  writes it, so that a step is never saved twice.
"""

from __future__ import annotations

import lightning as L

CHECKPOINT_METHODS = ("_save_last_checkpoint", "_monitor_candidates", "_should_skip_saving_checkpoint")


def stop_after_this_batch(trainer: L.Trainer) -> None:
    """End training after the running batch, as SIGTERM does (Lightning then raises
    ``SIGTERMException``)."""
    trainer._signal_connector.received_sigterm = True
