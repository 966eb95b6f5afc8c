"""Message lifetimes kombu asks for, as kestrelpy exptimes (relative seconds or unix time)."""

from __future__ import annotations

from kestrelpy.kombu.transport import _broadcast_expiry_s, _expiry_s


def test_expiration_ms_rounds_up_to_whole_seconds() -> None:
    assert _expiry_s({"properties": {"expiration": "1500"}}) == 2
    assert _expiry_s({"properties": {"expiration": "1"}}) == 1


def test_no_or_bad_expiration_is_no_expiry() -> None:
    assert _expiry_s({"properties": {}}) == 0
    assert _expiry_s({"properties": {"expiration": "soon"}}) == 0
    assert _expiry_s({}) == 0


def test_a_broadcasts_expires_header_is_its_absolute_exptime() -> None:
    assert _broadcast_expiry_s({"headers": {"expires": 1_900_000_000.2}}) == 1_900_000_001


def test_broadcasts_without_a_unix_time_do_not_expire() -> None:
    assert _broadcast_expiry_s({"headers": {"expires": 0}}) == 0
    assert _broadcast_expiry_s({"headers": {"expires": "2030-01-01T00:00:00"}}) == 0
    assert _broadcast_expiry_s({"headers": None}) == 0


def test_a_ttl_just_under_a_million_seconds_stays_relative() -> None:
    assert _expiry_s({"properties": {"expiration": "999999000"}}, lambda: 1_800_000_000) == 999_999


def test_a_ttl_of_a_million_seconds_or_more_is_sent_as_a_unix_time() -> None:
    """Relative, it would be a 1970 date to the server: stored already expired."""
    message = {"properties": {"expiration": str(1_000_000 * 1000)}}
    assert _expiry_s(message, lambda: 1_800_000_000.7) == 1_801_000_000
    month = {"properties": {"expiration": str(30 * 24 * 3600 * 1000)}}
    assert _expiry_s(month, lambda: 1_800_000_000) == 1_800_000_000 + 30 * 24 * 3600


def test_a_ttl_past_2038_is_clamped_to_the_largest_exptime() -> None:
    """A bigger exptime is CLIENT_ERROR, and the server closes the connection."""
    forever = {"properties": {"expiration": str(10**15)}}
    assert _expiry_s(forever, lambda: 1_800_000_000) == 2**31 - 1
    assert _expiry_s({"properties": {"expiration": "inf"}}, lambda: 1_800_000_000) == 0
