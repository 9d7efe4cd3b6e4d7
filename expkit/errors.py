"""Errors a user can cause. They print as one line (`error: ...`) and exit with code 2."""
import os


class UserError(Exception):
    """Bad input or config: the message names the problem and how to fix it."""


def require(ok, message):
    if not ok:
        raise UserError(message)


class Skipped(UserError):
    """The job cannot run here for a reason the user must act on (e.g. pretrained weights are
    not on this machine). In a sweep it is recorded as status 'skipped', not as a failure."""


class ForeignDir(UserError):
    """The run dir holds another config's results: nothing is written there."""


def full_error():
    """Hydra's documented switch: HYDRA_FULL_ERROR=1 shows every traceback."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"
