"""kestrelpy.kombu.names: broker URLs to servers, kombu names to kestrelpy queue names."""

from __future__ import annotations

import pytest

from kestrelpy.kombu import names


def test_one_host_uses_hostname_and_port() -> None:
    assert names.servers_from_alternates("h1", 22134, []) == ["h1:22134"]


def test_one_host_without_port_gets_kestrels_default() -> None:
    assert names.servers_from_alternates("h1", None, []) == ["h1:22133"]


def test_semicolon_alternates_are_all_servers_in_order() -> None:
    alternates = ["kestrelpy://h1:22133", "h2:22134//", "h1:22133"]
    assert names.servers_from_alternates("h1", 22133, alternates) == ["h1:22133", "h2:22134"]


def test_alternate_without_port_gets_the_default() -> None:
    assert names.servers_from_alternates("h1", 1, ["kestrelpy://h1:1", "h2//"]) == [
        "h1:1",
        "h2:22133",
    ]


def test_ipv6_alternates_keep_brackets() -> None:
    got = names.servers_from_alternates(None, None, ["kestrelpy://[::1]:22133", "[::1]:22134"])
    assert got == ["[::1]:22133", "[::1]:22134"]


@pytest.mark.parametrize(
    ("part", "says"),
    [
        ("h2:notaport", "port must be a number"),
        ("h2:70000", "port must be a number"),
        ("redis://h2:6379", "scheme 'redis'"),
        (":22133", "no host"),
        ("h2:0", "port 0"),
    ],
)
def test_bad_alternate_is_a_value_error_naming_it(part: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as caught:
        names.servers_from_alternates("h1", 22133, ["kestrelpy://h1:22133", part])
    assert isinstance(caught.value, names.BrokerURLError)
    assert repr(part) in str(caught.value)


def test_safe_names_are_unchanged() -> None:
    for name in ("celery", "celery@host.celery.pidbox", "a-b_c.d:e=f"):
        assert names.queue_name(name) == name


def test_unsafe_characters_are_percent_encoded_and_reversible() -> None:
    name = "a/b+c~d%e f\u00e9"
    encoded = names.queue_name(name)
    assert encoded == "a%2Fb%2Bc%7Ed%25e%20f%C3%A9"
    assert not set(encoded) & set("/+~ ")
    assert names.kombu_name(encoded) == name


def test_distinct_names_stay_distinct() -> None:
    assert names.queue_name("a+b") != names.queue_name("a%2Bb")


def test_empty_or_too_long_names_are_refused() -> None:
    with pytest.raises(names.UnmappableError, match="empty"):
        names.queue_name("")
    with pytest.raises(names.UnmappableError, match="at most 230"):
        names.queue_name("x" * 231)


def test_fanout_child_is_parent_plus_queue() -> None:
    assert names.fanout_parent("celery.pidbox") == "celery.pidbox"
    got = names.fanout_child("celery.pidbox", "w1@h.celery.pidbox")
    assert got == "celery.pidbox+w1@h.celery.pidbox"


def test_fanout_child_of_plus_names_splits_at_the_right_plus() -> None:
    child = names.fanout_child("ex+1", "q+2")
    parent, _, queue = child.partition("+")
    assert names.kombu_name(parent) == "ex+1"
    assert names.kombu_name(queue) == "q+2"


def test_binding_marker_names_exchange_key_and_queue() -> None:
    assert names.binding_parent("reply.celery.pidbox", "k1") == "reply.celery.pidbox~k1"
    marker = names.binding_marker("reply.celery.pidbox", "k1", "k1.reply.celery.pidbox")
    assert marker == "reply.celery.pidbox~k1+k1.reply.celery.pidbox"
    assert names.binding_parent("e", "") == "e~"


def test_bound_queues_reads_a_children_stat() -> None:
    children = "e~k+q1,e~k+a%2Fb"
    assert names.bound_queues(children) == ["q1", "a/b"]
    assert names.bound_queues("") == []


def test_too_long_child_is_refused_with_advice() -> None:
    with pytest.raises(names.UnmappableError, match="shorter exchange and queue names"):
        names.fanout_child("e" * 120, "q" * 120)


def test_errors_queue_of_a_plain_queue_keeps_its_name() -> None:
    assert names.errors_queue("celery") == "celery_errors"


def test_errors_queue_of_a_fanout_child_is_not_a_child() -> None:
    """``news+reader_errors`` would be one more child of ``news``, filled by every
    broadcast."""
    got = names.errors_queue("news+reader")
    assert "+" not in got
    assert got == "news%2Breader_errors"
    assert names.kombu_name(got) == "news+reader_errors"
