"""How a frame's body becomes bytes: ``json`` (default), ``raw`` and ``pickle``.

Pickle carries any Python object, which is why it is dangerous: unpickling runs code the
bytes choose. The router allows it only on interfaces whose config says ``trusted = true``
and whose backend stays on this machine or goes to our own kestrelpy servers (``local``,
``kestrel``); never on ``http`` or ``stomp``, whose messages come over a network from
peers we do not control. The decision is made when the interface is configured and again
for each message received (its ``content-encoding`` header names its encoding).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kestrelpy.router.errors import RouterConfigError
from kestrelpy.router.frame import Invocation

_INVOCATION_KEY = "$invocation"


@dataclass(frozen=True, slots=True)
class Encoding:
    name: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]
    runs_code: bool  # decoding attacker-chosen bytes could run attacker-chosen code


def _json_default(value: Any) -> Any:
    if isinstance(value, Invocation):
        call = {"target": value.target, "args": list(value.args), "kwargs": value.kwargs}
        return {_INVOCATION_KEY: call}
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json_encode(body: Any) -> bytes:
    text = json.dumps(body, default=_json_default, separators=(",", ":"), ensure_ascii=False)
    return text.encode()


def _json_hook(obj: dict[str, Any]) -> Any:
    call = obj.get(_INVOCATION_KEY)
    if len(obj) == 1 and isinstance(call, dict) and isinstance(call.get("target"), str):
        args = call.get("args") or []
        kwargs = call.get("kwargs") or {}
        if isinstance(args, list) and isinstance(kwargs, dict):
            return Invocation(call["target"], tuple(args), kwargs)
    return obj


def _json_decode(data: bytes) -> Any:
    return json.loads(data, object_hook=_json_hook)


def _raw_encode(body: Any) -> bytes:
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    raise TypeError(f"the raw encoding carries bytes or str, not {type(body).__name__}")


def _pickle_encode(body: Any) -> bytes:
    return pickle.dumps(body, protocol=pickle.HIGHEST_PROTOCOL)


def _pickle_decode(data: bytes) -> Any:
    return pickle.loads(data)


JSON = Encoding("json", _json_encode, _json_decode, runs_code=False)
RAW = Encoding("raw", _raw_encode, bytes, runs_code=False)
PICKLE = Encoding("pickle", _pickle_encode, _pickle_decode, runs_code=True)

ENCODINGS: dict[str, Encoding] = {e.name: e for e in (JSON, RAW, PICKLE)}


def encoding_named(name: str, *, where: str) -> Encoding:
    encoding = ENCODINGS.get(name)
    if encoding is None:
        known = ", ".join(ENCODINGS)
        raise RouterConfigError(f"{where}: unknown encoding {name!r}: expected one of {known}")
    return encoding
