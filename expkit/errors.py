"""Errors a user can cause. They print as one line (`error: ...`) and exit with code 2."""


class UserError(Exception):
    """Bad input or config: the message names the problem and how to fix it."""


def require(ok, message):
    if not ok:
        raise UserError(message)
