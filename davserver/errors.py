"""Typed errors the CLI turns into one-line messages and exit codes."""

__all__ = ["StartupError"]


class StartupError(Exception):
    """The server cannot start: the message says what is wrong and how to fix it."""
