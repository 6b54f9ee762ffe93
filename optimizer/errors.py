"""User-facing errors: the CLI prints these as one line and exits non-zero, never a traceback."""


class VitoptError(Exception):
    """Bad input or an unmet precondition, with a message a user can act on."""


class MissingDependency(VitoptError):
    """An optional backend is not installed; the message names what to install."""
