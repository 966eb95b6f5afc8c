"""Interface configuration, queue matching, encodings and the stored-message format: the
router's pure parts, checked on plain values."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from kestrelpy.router.config import parse_interface, parse_queues
from kestrelpy.router.encodings import ENCODINGS, JSON, PICKLE, RAW
from kestrelpy.router.errors import RouterConfigError
from kestrelpy.router.frame import Invocation
from kestrelpy.router.wire import BadMessage, Message, pack, unpack


def local(**extra: Any) -> dict[str, Any]:
    return {"implementation": "local", "path": "/unused", **extra}


# -- queue matching ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queues", "matching", "not_matching"),
    [
        ("orders", ["orders"], ["orders2", "order", "ORDERS"]),
        (["a", "b"], ["a", "b"], ["c", "ab"]),
        ("/mail_.*/", ["mail_out", "mail_"], ["mail", "xmail_out"]),  # the whole name
        ("/(jobs|tasks)[0-9]+/", ["jobs1", "tasks22"], ["jobs", "jobs1x"]),
        (None, ["anything", "x"], []),
    ],
)
def test_a_matcher_fits_the_names_it_should(
    queues: Any, matching: list[str], not_matching: list[str]
) -> None:
    matcher = parse_queues(queues, "test")
    assert all(matcher.matches(name) for name in matching)
    assert not any(matcher.matches(name) for name in not_matching)


@pytest.mark.parametrize("queues", ["", [], [""], ["a", 3], 5, "/(unclosed/", {"a": 1}])
def test_a_bad_matcher_is_refused_naming_the_interface(queues: Any) -> None:
    with pytest.raises(RouterConfigError, match="router interface 'x': queues"):
        parse_interface("x", local(queues=queues))


# -- interface config -------------------------------------------------------------------------


def test_a_full_config_is_read_whole() -> None:
    interface = parse_interface(
        "orders",
        {
            "queues": ["orders"],
            "implementation": "kestrel",
            "servers": ["127.0.0.1:1"],
            "encoding": "raw",
            "send": {"buffer": "orders_buffer", "on_exit": "flush", "message_limit": 10},
            "delivery": {
                "allow": ["shop.tasks"],
                "on_error": [
                    "log",
                    {"callback": "json:dumps"},
                    {"retry": {"max": 2, "backoff": "fixed", "base_s": 0.5}},
                    {"requeue": {"queue": "errors", "immediate": True}},
                    {"dead_letter": "dead"},
                    "drop",
                ],
            },
        },
    )
    assert interface.options == {"servers": ["127.0.0.1:1"]}  # the backend's keys only
    assert interface.encoding is RAW
    assert interface.send.buffer == "orders_buffer" and interface.send.message_limit == 10
    kinds = [action.kind for action in interface.delivery.on_error]
    assert kinds == ["log", "callback", "retry", "requeue", "dead_letter", "drop"]
    retry = interface.delivery.on_error[2].retry
    assert retry is not None and [retry.delay_s(n) for n in (1, 2, 3)] == [0.5, 0.5, 0.5]
    requeue = interface.delivery.on_error[3]
    assert requeue.queue == "errors" and requeue.immediate
    assert interface.delivery.allows("shop.tasks") and interface.delivery.allows("shop.tasks.x")
    assert not interface.delivery.allows("shop") and not interface.delivery.allows("shop.tasksx")


def test_exponential_backoff_doubles_up_to_its_cap() -> None:
    interface = parse_interface(
        "x", local(delivery={"on_error": [{"retry": {"max": 9, "base_s": 1, "max_s": 5}}]})
    )
    retry = interface.delivery.on_error[0].retry
    assert retry is not None and [retry.delay_s(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


@pytest.mark.parametrize(
    ("config", "names"),
    [
        ({"implementation": "carrier-pigeon"}, "implementation"),
        (local(encoding="yaml"), "unknown encoding"),
        (local(trusted="yes"), "trusted"),
        (local(send={"on_exit": "later"}), "on_exit"),
        (local(send={"message_limit": 0}), "message_limit"),
        (local(send={"bufer": "x"}), "unknown key 'bufer'"),
        (local(delivery={"allow": "shop"}), "allow"),
        (local(delivery={"on_error": "log"}), "on_error"),
        (local(delivery={"on_error": ["shout"]}), "on_error"),
        (local(delivery={"on_error": [{"retry": {"max": -1}}]}), "max"),
        (local(delivery={"on_error": [{"retry": {"max": 1, "backoff": "linear"}}]}), "backoff"),
        (local(delivery={"on_error": [{"dead_letter": ""}]}), "dead_letter"),
        (local(delivery={"callback": "no_such_module_here:f"}), "cannot load"),
        (local(delivery={"callback": "json"}), "module:function"),
        (local(delivery={"callback": "json:__doc__"}), "not callable"),
    ],
)
def test_a_bad_key_fails_when_the_interface_is_added_naming_it(
    config: dict[str, Any], names: str
) -> None:
    with pytest.raises(RouterConfigError, match="router interface 'x'") as refused:
        parse_interface("x", config)
    assert names in str(refused.value)


@pytest.mark.parametrize("implementation", ["http", "stomp"])
def test_pickle_is_refused_on_network_backends_even_when_trusted(implementation: str) -> None:
    with pytest.raises(RouterConfigError, match="unpickling network input runs code"):
        parse_interface(
            "x", {"implementation": implementation, "encoding": "pickle", "trusted": True}
        )


@pytest.mark.parametrize("implementation", ["local", "kestrel"])
def test_pickle_needs_trusted_on_our_own_backends(implementation: str) -> None:
    with pytest.raises(RouterConfigError, match="trusted = true"):
        parse_interface("x", {"implementation": implementation, "encoding": "pickle"})
    trusted = parse_interface(
        "x", {"implementation": implementation, "encoding": "pickle", "trusted": True}
    )
    assert trusted.encoding is PICKLE and trusted.allows_encoding(PICKLE)


# -- encodings --------------------------------------------------------------------------------


def test_json_carries_invocations_and_plain_values() -> None:
    call = Invocation("shop.tasks:resize", (1, "a"), {"width": 3})
    body = {"list": [1, 2], "text": "héllo", "call": call}
    assert JSON.decode(JSON.encode(body)) == body


def test_a_json_object_that_only_looks_like_an_invocation_stays_a_dict() -> None:
    lookalike = {"$invocation": {"target": 5}}
    assert JSON.decode(JSON.encode(lookalike)) == lookalike


def test_raw_carries_bytes_and_text_only() -> None:
    assert RAW.decode(RAW.encode(b"\x00\xff")) == b"\x00\xff"
    assert RAW.encode("é") == "é".encode()
    with pytest.raises(TypeError):
        RAW.encode({"a": 1})


def test_pickle_round_trips_and_is_marked_as_running_code() -> None:
    value = {"set": {1, 2}, "tuple": (1, 2)}
    assert PICKLE.decode(PICKLE.encode(value)) == value
    assert PICKLE.runs_code and not JSON.runs_code and not RAW.runs_code
    assert pickle.loads(PICKLE.encode(value)) == value
    assert set(ENCODINGS) == {"json", "raw", "pickle"}


# -- the stored form --------------------------------------------------------------------------


def test_a_message_packs_and_unpacks_with_any_body() -> None:
    message = Message({"message-id": "1", "x-é": "ü\nline"}, b"KPR/1 \n\x00body")
    assert unpack(pack(message)) == message


def test_an_item_without_the_marker_is_a_body_with_no_headers() -> None:
    assert unpack(b'{"jobName": "x"}') == Message({}, b'{"jobName": "x"}')


@pytest.mark.parametrize("data", [b"KPR/1 {}", b"KPR/1 nope\nbody", b'KPR/1 {"a": 1}\nbody'])
def test_a_damaged_header_line_is_refused(data: bytes) -> None:
    with pytest.raises(BadMessage):
        unpack(data)
