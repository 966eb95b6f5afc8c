"""What the client raises. Everything derives from :class:`ClientError`, itself a
:class:`~kestrelpy.errors.KestrelpyError`, so one ``except`` catches the lot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from kestrelpy.errors import KestrelpyError

if TYPE_CHECKING:
    from kestrelpy.client.protocol import Reply


class ClientError(KestrelpyError):
    """Base class of every error the bundled client raises."""


class UsageError(ClientError):
    """The caller asked for something the client cannot do (bad address, unknown codec,
    a second ``open`` while one is held); no request was sent."""


class ServerUnavailable(ClientError):
    """A server could not be reached, timed out or dropped the connection. The client
    marks it down and tries the others, so most callers see :class:`NoServerAvailable`;
    ``close`` and ``abort`` raise this one: the connection that held the read is gone, and
    with it the read (the server has put the item back)."""

    def __init__(
        self, server: str, why: str, *, replies: Sequence[Reply] = (), stale: bool = False
    ) -> None:
        super().__init__(f"{server}: {why}")
        self.server = server
        self.why = why
        self.replies = list(replies)  # what did arrive before the failure, in order
        self.stale = stale  # closed or reset before any reply: maybe an old idle connection


class NoServerAvailable(ClientError):
    """Every server is down or backing off; ``retry_in_s`` says when the first is due."""

    def __init__(self, failures: Sequence[str], retry_in_s: float) -> None:
        detail = "; ".join(failures) or "no servers configured"
        super().__init__(f"no server available ({detail}); next retry in {retry_in_s:.2f}s")
        self.failures = tuple(failures)
        self.retry_in_s = retry_in_s
        self.stored = 0  # put_many: items stored (and acknowledged) before it was raised


class ServerRefused(ClientError):
    """A server answered a request with a refusal (``NOT_STORED``, ``SERVER_ERROR``,
    ``CLIENT_ERROR``, ``ERROR``): the write was not taken, and the message names the
    server and its reply, so nothing is dropped silently.

    For :meth:`put_many`: ``stored`` counts the items of the call that were stored (they
    stay queued; after the refused one too, when a server refused one item of a batch and
    took the rest), and ``refused`` lists the indexes, in the call's items, of those the
    server refused. Items neither stored nor refused were not taken either: the server
    closed the connection after its refusal, or they were never sent.
    """

    def __init__(
        self,
        server: str,
        request: str,
        reply: str,
        *,
        stored: int = 0,
        refused: Sequence[int] = (),
    ) -> None:
        super().__init__(f"{server} refused {request}: {reply}")
        self.server = server
        self.request = request
        self.reply = reply
        self.stored = stored
        self.refused = list(refused)


class DecodeError(ClientError):
    """An item's bytes could not be decoded. ``body`` and ``flags`` are the item as read,
    so a worker can dead-letter it instead of retrying forever."""

    def __init__(self, why: str, body: bytes, flags: int) -> None:
        super().__init__(why)
        self.body = body
        self.flags = flags
