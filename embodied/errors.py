"""Errors the CLI turns into a one-line message and a nonzero exit."""


class ConfigError(ValueError):
    """The user's configuration, input file or checkpoint cannot be used as given."""
