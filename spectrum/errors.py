"""Errors that are the user's doing: shown as one line naming the problem, never a traceback."""


class UserError(Exception):
    """Bad input: a path, a parameter, a mismatched pair. The message says what and where."""
