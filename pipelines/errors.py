"""Errors that the CLI turns into one clear line and exit code 2."""


class UserError(Exception):
    """Bad input from the user (a missing file, a wrong format, a bad option).

    The CLI prints ``error: <message>`` and exits with code 2, without a traceback.
    The message should name the file and the problem.
    """
