"""Errors that are the user's doing: shown as one line naming the problem, never a traceback."""


class UserError(Exception):
    """Bad input: a path, a parameter, a mismatched pair. The message says what and where.

    ``cli_hint`` is what to type on the command line to get past it (a flag); the CLI adds
    it to the message and the dashboard leaves it out, so a page never names a flag.
    """

    def __init__(self, message: str, *, cli_hint: str | None = None) -> None:
        super().__init__(message)
        self.cli_hint = cli_hint

    def for_cli(self) -> str:
        return f"{self}; {self.cli_hint}" if self.cli_hint else str(self)
