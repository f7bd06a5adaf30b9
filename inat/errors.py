"""The one exception type users see.

Anything raised as `InatError` is a problem with the user's input or environment: the CLI prints its
message as one line and exits non-zero, without a traceback. Everything else is a bug and keeps its
traceback.
"""


class InatError(Exception):
    """A user-facing error; the message must name the culprit (file, key, value) and what to do."""


class ConfigError(InatError):
    """A config file, `--set` override or sweep file is invalid."""


class DataError(InatError):
    """The dataset on disk is missing, malformed or does not match the run."""
