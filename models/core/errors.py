"""User-facing errors: the CLI prints them as one line and exits 2, never a traceback."""


class UserError(Exception):
    """Bad input from the user. The message names the bad input and how to fix it."""
