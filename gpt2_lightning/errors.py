"""The errors a user can fix: bad input, settings, files or network.

Each names what is wrong (the file, record, turn and field; the setting; the URL) and what
to do. The ``gpt2`` command prints them as one line (``error: ...``) and exits with code 2.
"""


class Gpt2LightningError(Exception):
    """An error caused by what the user gave (data, settings, files) or the environment."""


class ConfigError(Gpt2LightningError, ValueError):
    """A setting that cannot work, found before any work starts."""


class DataError(Gpt2LightningError, ValueError):
    """Bad instruction data: the message names the file, the record and the field."""


class CheckpointMismatchError(Gpt2LightningError, ValueError):
    """Weights or a checkpoint that are unreadable or do not fit the model they are loaded into."""


class DownloadError(Gpt2LightningError, RuntimeError):
    """A download failed for good; the message says which URL and what to do instead."""


class TokenizerUnavailableError(Gpt2LightningError, RuntimeError):
    """The GPT-2 vocabulary is neither cached nor downloadable."""


class TrainingDivergedError(Gpt2LightningError, RuntimeError):
    """The loss became NaN or infinite."""


class JudgeError(Gpt2LightningError, RuntimeError):
    """The LLM judge endpoint is unreachable or answers something unusable."""
