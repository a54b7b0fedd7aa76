"""The one base class of the errors a user can fix: bad input, settings, files or network.

Entry points print these as one line (``error: ...``) and exit with code 2.
"""


class Gpt2LightningError(Exception):
    """An error caused by what the user gave (data, settings, files) or the environment."""
