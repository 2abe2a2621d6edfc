"""The query parameters of `emo-edge serve`'s endpoints: each one an endpoint reads is declared in
:data:`PARAMS` and read by :func:`read_params`, which answers 400 with one line for a value it
cannot take (never a traceback); parameters no endpoint reads are ignored."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional
from urllib.parse import parse_qsl

MAX_FIELDS = 100  # query fields per request


@dataclass(frozen=True)
class Param:
    """One query parameter: a number from ``lo`` to ``hi``, one of ``choices``, or text."""

    what: str  # a good value, as the 400 line says it
    default: object = None
    lo: Optional[float] = None
    hi: Optional[float] = None
    choices: tuple = ()
    max_len: int = 256


TOKEN = Param("the server's token", "", max_len=1024)
PARAMS = {
    "page": {"video": Param("mjpeg, snapshot or off", "mjpeg", choices=("mjpeg", "snapshot", "off"))},
    "events": {"rate": Param("a number of events per second from 0 (every frame) to 1000", 0.0, lo=0.0, hi=1000.0)},
    "snapshot": {"t": Param("short text (a cache-buster)", "", max_len=64)},
}
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,3})?")


class BadRequest(Exception):
    """A query the endpoint cannot take; the message is the one-line 400 answer."""


def read_params(query: str, spec: dict) -> dict:
    """The values of the parameters in ``spec`` (their defaults when absent); BadRequest when one is
    repeated, malformed or out of range."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="replace", max_num_fields=MAX_FIELDS)
    except ValueError:
        raise BadRequest(f"too many query parameters (at most {MAX_FIELDS})") from None
    given: dict = {}
    for k, v in pairs:
        if k in spec:
            if k in given:
                raise BadRequest(f"{k} is given more than once")
            given[k] = v
    return {k: _value(k, given[k], p) if k in given else p.default for k, p in spec.items()}


def _value(name: str, raw: str, p: Param):
    bad = BadRequest(f"{name} must be {p.what}, not {ascii(raw[:40])}{'...' if len(raw) > 40 else ''}")
    if p.lo is not None:
        if len(raw) > 40 or not NUMBER.fullmatch(raw):
            raise bad
        x = float(raw)
        if not p.lo <= x <= p.hi:
            raise bad
        return x
    if p.choices:
        if raw not in p.choices:
            raise bad
        return raw
    if len(raw) > p.max_len:
        raise BadRequest(f"{name} is longer than {p.max_len} characters")
    return raw
