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
