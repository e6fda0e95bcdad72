"""The exception hierarchy of ``sweep``.

Every error the library raises on purpose derives from :class:`SweepError`. The
command line maps the classes to exit codes in one place (``sweep.cli``):
user mistakes exit 2, interruptions 130 (SIGINT) or 143 (SIGTERM), anything
else 1. Messages are one line that names the field or file, the value, and
what is allowed.
"""

from __future__ import annotations


class SweepError(Exception):
    """Base class of all errors raised by ``sweep``."""

    exit_code: int = 1


class UserError(SweepError):
    """The user's input is wrong; nothing was written. Exit code 2."""

    exit_code = 2


class SpecError(UserError):
    """A study file (or an override of one of its fields) is invalid."""


class DataError(UserError):
    """The data named by a study cannot be loaded or is unusable."""


class StudyNotFoundError(UserError):
    """The named study does not exist in the storage."""


class SpecDriftError(UserError):
    """A study is resumed with a spec that differs from the stored one."""


class StorageError(SweepError):
    """The storage cannot be reached or used."""


class FatalError(SweepError):
    """A failure that must stop the whole sweep (not just one trial)."""


class TrialFailed(SweepError):
    """One trial failed for a reason that is recorded on it; the sweep goes on."""


class Interrupted(SweepError):
    """The sweep was stopped by a signal. Exit code 128 + the signal number.

    ``while_`` says what was stopped when no trial was running (waiting for a
    study, for example): nothing was written, so there is nothing to resume.
    """

    def __init__(self, signum: int, *, while_: str | None = None) -> None:
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        self.while_ = while_
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}" + (f" while {while_}" if while_ else ""))
