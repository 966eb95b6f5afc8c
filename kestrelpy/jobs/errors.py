"""What the jobs layer raises; everything derives from :class:`JobError`, itself a
:class:`~kestrelpy.errors.KestrelpyError`, so one ``except`` catches the lot."""

from __future__ import annotations

from kestrelpy.errors import KestrelpyError


class JobError(KestrelpyError):
    """Base class of every error the jobs layer raises on purpose."""


class InvalidJob(JobError):
    """An item is not a job envelope. A worker dead-letters such an item at once: running
    it again cannot make it valid, so a retry would only loop."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobConfigError(JobError, ValueError):
    """A job setup mistake the caller can fix: a bad retry policy, a job name registered
    twice, a ``--handler`` or ``--jobs`` that does not import. Raised at setup time, never
    while a job runs. Also a ``ValueError``, as bad arguments usually are."""
