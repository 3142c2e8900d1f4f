"""The one error world-model code raises for input a user must fix; the CLI prints it as one line."""


class WorldModelError(ValueError):
    """A model, buffer or argument that cannot be used as given (sizes, horizons, files)."""
