"""Errors that reach the user as one line (exit 2). Kept import-light: the CLI catches them all."""


class UsageError(Exception):
    """A user mistake that is not a config field: the message says what to do."""


class PipelineError(RuntimeError):
    """The pipeline cannot start or finish; the message names the part at fault."""


class RayConnectError(RuntimeError):
    """Ray is not reachable at the named address."""


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message names the URI."""
