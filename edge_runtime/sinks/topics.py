"""Where `--mqtt` publishes: the broker URL, the topic prefix, and the rules of the MQTT spec
(3.1.1 and 5.0, sections 1.5.3 and 4.7) for a topic a client publishes to, checked by one function
for every topic emo publishes (its own under the prefix, and Home Assistant's discovery topics).

A broker drops the message, or closes the connection, for a topic that breaks these rules, so a
bad topic would lose every message without a word. emo refuses it at start instead.
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import Optional
from urllib.parse import unquote, urlsplit

from ..errors import EmoError

PASSWORD_ENV = "EMO_MQTT_PASSWORD"
MAX_BYTES = 65535  # a topic is a length-prefixed UTF-8 string: 2 bytes of length
LONGEST_TRACK = 2 ** 64  # the track id whose topic is checked at start (ids count up from 1)
PREFIX_FIX = "give a prefix such as emo/livingroom (letters, digits, '-', '_', and '/' between levels)"


@dataclass
class BrokerAddress:
    host: str
    port: int
    tls: bool
    user: Optional[str]
    password: Optional[str]
    prefix: str


def parse_url(url: str) -> BrokerAddress:
    """``mqtt://[user[:password]@]host[:port][/prefix]`` or ``mqtts://...`` (TLS); the password is
    better given in EMO_MQTT_PASSWORD than in the URL."""
    what = f"--mqtt {_shown_url(url)}"
    try:
        u = urlsplit(url)
        host = u.hostname  # parsed when asked: a broken [IPv6] address raises ValueError
    except ValueError:
        host = None
    if "#" in url or "?" in url:  # even an empty fragment or query: '#' would have been meant as a topic
        raise EmoError(f"{what}: '#' and '?' cannot be part of it ('#' is an MQTT wildcard; a password goes in {PASSWORD_ENV})")
    if not host or u.scheme not in ("mqtt", "mqtts"):
        raise EmoError(f"{what}: give mqtt://[user@]host[:port][/prefix] or mqtts://... for TLS")
    try:
        port = u.port or (8883 if u.scheme == "mqtts" else 1883)
    except ValueError:
        raise EmoError(f"{what}: the port is not a number in 1..65535") from None
    try:
        prefix = unquote(u.path, errors="strict").strip("/") or f"emo/{node_id()}"
    except UnicodeDecodeError:
        raise EmoError(f"{what}: the topic prefix is not UTF-8 once its %-escapes are decoded; {PREFIX_FIX}") from None
    for topic in (prefix, *own_topics(prefix)):
        check_topic(topic, what, PREFIX_FIX)
    password = os.environ.get(PASSWORD_ENV) or (unquote(u.password) if u.password else None)
    return BrokerAddress(host, port, u.scheme == "mqtts", unquote(u.username) if u.username else None, password, prefix)


def own_topics(prefix: str) -> list[str]:
    """The topics published under ``prefix`` (for tracks, the one with the longest id)."""
    return [f"{prefix}/availability", f"{prefix}/state", f"{prefix}/tracks/{LONGEST_TRACK}"]


def _shown_url(url: str) -> str:
    """The URL for an error message: one printable line, the password (if any) masked."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return printable(url.replace(f":{password}@", ":***@", 1) if password else url, 120)


def node_id() -> str:
    """This device's name in topics and Home Assistant ids: the hostname, stable across restarts."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "emo"


def topic_problem(topic: str) -> Optional[str]:
    """Why a client may not publish to ``topic``, or None when it may."""
    if not topic:
        return "is empty"
    if "#" in topic or "+" in topic:
        return "holds a wildcard ('#' or '+'), which only subscriptions may use"
    if topic.startswith("$"):
        return "starts with '$', which brokers keep for their own topics ($SYS)"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if "\0" in topic:
        return "holds a NUL character"
    if any(_not_allowed(c) for c in topic):
        return "holds a control character or a Unicode non-character"
    if size > MAX_BYTES:
        return f"is {size:,} bytes long in UTF-8, more than MQTT's {MAX_BYTES:,}"
    if "" in topic.split("/"):
        return "has an empty level ('//', or '/' at the start or the end)"
    return None


def check_topic(topic: str, what: str, fix: str) -> str:
    """``topic`` when a client may publish to it, else an EmoError (one line) naming ``what`` gave
    it, what is wrong and ``fix``."""
    problem = topic_problem(topic)
    if problem:
        raise EmoError(f"{what}: the MQTT topic '{printable(topic)}' {problem}; {fix}")
    return topic


def printable(text: str, limit: int = 60) -> str:
    """``text`` as one printable line: control characters, line separators and lone surrogates
    escaped, and cut to ``limit`` characters."""
    shown = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _not_allowed(c: str) -> bool:
    """C0 and C1 control characters and the Unicode non-characters: the spec says a topic should not
    hold them, and a receiver (mosquitto does) may close the connection when it does."""
    o = ord(c)
    return o < 0x20 or 0x7F <= o <= 0x9F or 0xFDD0 <= o <= 0xFDEF or (o & 0xFFFE) == 0xFFFE
