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
- The training epoch loop's ``_should_check_val_fx``, which ``validate_at_even_fractions``
  wraps: Lightning offers no public way to say where in an epoch a fraction's validations fall.
"""

from __future__ import annotations

from fractions import Fraction

import lightning as L

CHECKPOINT_METHODS = ("_save_last_checkpoint", "_monitor_candidates", "_should_skip_saving_checkpoint")


def stop_after_this_batch(trainer: L.Trainer) -> None:
    """End training after the running batch, as SIGTERM does (Lightning then raises
    ``SIGTERMException``)."""
    trainer._signal_connector.received_sigterm = True


def validate_at_even_fractions(trainer: L.Trainer) -> None:
    """A fractional ``trainer.val_check_interval`` (0.25: four times an epoch) validates after the
    batch where the epoch crosses each multiple of the fraction, so its last validation is at the
    epoch's last batch. Lightning validates every ``int(batches * fraction)`` batches instead: an
    epoch of 117 batches at 0.25 after batches 29, 58, 87 and 116, never at its end, and a run's
    final weights then need a validation of their own. Anything else (an int interval, a time
    interval, a stop asked for, an epoch of unknown length) Lightning decides as before."""
    loop = trainer.fit_loop.epoch_loop
    lightning_decides = loop._should_check_val_fx

    def should_check_val(data_fetcher) -> bool:
        batches, interval = trainer.num_training_batches, trainer.val_check_interval
        if (isinstance(interval, float) and trainer.val_check_batch not in (None, float("inf"))
                and trainer.check_val_every_n_epoch is not None and 0 < batches < float("inf")
                and not trainer.should_stop and loop._should_check_val_epoch()):
            between = Fraction(str(interval)) * batches  # batches from one validation to the next
            done = loop.batch_idx + 1
            return done // between > (done - 1) // between
        return lightning_decides(data_fetcher)

    loop._should_check_val_fx = should_check_val
