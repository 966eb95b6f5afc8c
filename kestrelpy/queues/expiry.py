"""When an item expires: Kestrel's ``exptime`` rule on the way in, ``max_age`` at the head.

Times are unix milliseconds, and an expiry of 0 means never.
"""

from __future__ import annotations

from kestrelpy.storage.layout import StoredItem as Item

_RELATIVE_EXPIRY_LIMIT_S = 1_000_000  # Kestrel: below this an exptime is relative seconds


def expiry_ms(exptime: int, now_ms: int) -> int:
    """Kestrel's exptime rule in unix ms: 0 none, < 1,000,000 relative s, else absolute s.

    A negative exptime means already expired (kept as 1 ms after the epoch).
    """
    if exptime == 0:
        return 0
    if exptime < 0:
        return 1
    if exptime < _RELATIVE_EXPIRY_LIMIT_S:
        return now_ms + exptime * 1000
    return exptime * 1000


def is_expired(item: Item, max_age: int | None, now_ms: int) -> bool:
    """Expired at its own expiry or ``max_age`` ms after it was added, whichever is first."""
    expiry = item.expiry_ms
    if max_age is not None:
        aged_out = item.added_ms + max_age
        expiry = aged_out if not expiry else min(expiry, aged_out)
    return bool(expiry) and expiry <= now_ms
