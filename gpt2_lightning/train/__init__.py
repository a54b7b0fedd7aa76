"""Training: the LightningModule, the loss, callbacks, checkpoints and strategies."""
