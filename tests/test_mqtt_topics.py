"""`--mqtt` topics: a prefix (percent-encoded or not) or a hostname that would give a topic a broker
drops is refused at start with one line and exit 2; otherwise every topic emo publishes is one
the MQTT spec allows. No broker is needed: the sink runs against a recording stand-in for paho.
"""
from __future__ import annotations

import re
import subprocess
from types import SimpleNamespace
from unittest import mock
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from emo.edge_runtime.sinks import topics
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.labels import LABELS
from emo.edge_runtime.sinks.topics import LONGEST_TRACK, parse_url

from conftest import REPO, bin_path

ASTRONAUT = REPO / "examples" / "astronaut.png"
BROKER = "mqtt://127.0.0.1:1"  # nothing listens there: no test gets as far as connecting
TRICKY = ["#", "+", "$", "/", "//", "%", "%2", "%23", "%2B", "%00", "%FF", "?", "\0", "\n", "\x7f", "\x85", "\u2028",
          "\ufffe", "\ud800", "é", "😀", " ", "emo", "SYS"]
NAMES = st.lists(st.one_of(st.sampled_from(TRICKY), st.characters(exclude_categories=())), max_size=8).map("".join)


def publishable(topic: str) -> bool:
    """The spec's rules for a topic a client publishes to, written out independently of emo's code."""
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    bad_char = re.search("[\x00-\x1f\x7f-\x9f#+\ufdd0-\ufdef]", topic) or any((ord(c) & 0xFFFE) == 0xFFFE for c in topic)
    return 0 < size <= 65535 and not bad_char and not topic.startswith("$") and all(topic.split("/"))


class RecordingClient:
    """Stands in for paho's Client: connects at once and records every topic handed to it."""

    topics: list[str] = []

    def __init__(self, *a, **kw):
        self.on_connect = self.on_disconnect = self.on_message = self.on_connect_fail = None

    def will_set(self, topic, *a, **kw):
        self.topics.append(topic)

    payloads: list[tuple] = []

    def publish(self, topic, payload=None, *a, **kw):
        self.topics.append(topic)
        self.payloads.append((topic, payload))
        return SimpleNamespace(rc=0, wait_for_publish=lambda timeout=None: None)

    def subscribe(self, topic, *a, **kw):
        self.topics.append(topic)

    def loop_start(self):
        self.on_connect(self, None, {}, SimpleNamespace(is_failure=False))

    def username_pw_set(self, *a): pass
    def tls_set(self, *a): pass
    def reconnect_delay_set(self, **kw): pass
    def connect_async(self, *a, **kw): pass
    def disconnect(self): pass
    def loop_stop(self): pass


def frame(i: int, faces: int) -> SimpleNamespace:
    scores = {e: 100.0 / len(LABELS) for e in LABELS}
    face = SimpleNamespace(track=7, box=(10, 10, 40, 40), look=None, scores=scores, emotion="happy", confidence=0.9)
    return SimpleNamespace(frame=SimpleNamespace(timestamp=i * 0.5, index=i), faces=[face] * faces)


def published_topics(url: str) -> list[str]:
    """Every topic a sink for ``url`` hands to paho over a short run: connect, discovery, a face that
    appears and leaves, state, offline."""
    paho = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt not installed: pip install -e '.[dev]'")
    from emo.edge_runtime.sinks.mqtt import MqttOptions, MqttSink

    RecordingClient.topics = []
    with mock.patch.object(paho, "Client", RecordingClient):
        sink = MqttSink(MqttOptions(url, interval=0.0), LABELS, {"emo_version": "test"}, connect_wait=1.0)
        for i, faces in enumerate([1, 1, 0, 0, 0, 0]):
            sink.write(frame(i, faces))
        sink.close()
    assert sink.published > 0 and any("/tracks/" in t for t in RecordingClient.topics)
    return RecordingClient.topics


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and msg.isprintable() and msg.startswith("--mqtt"), msg
    return msg


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(prefix=NAMES, hostname=NAMES, encoded=st.booleans())
def test_a_prefix_is_refused_in_one_line_or_every_topic_is_publishable(prefix, hostname, encoded):
    path = quote(prefix, safe="", errors="surrogatepass") if encoded else prefix
    url = f"{BROKER}/{path}"
    with mock.patch.object(topics.socket, "gethostname", lambda: hostname):
        try:
            parse_url(url)
        except EmoError:
            one_line(pytest.raises(EmoError, parse_url, url))
            event("refused")
            return
        event("accepted")
        assert all(publishable(t) for t in published_topics(url)), (url, published_topics(url))


@pytest.mark.parametrize("path, problem", [
    ("emo/%23", "wildcard"), ("emo/%2B/x", "wildcard"), ("emo/#", "'#'"), ("emo/+", "wildcard"),
    ("%24SYS/emo", "'$'"), ("$SYS", "'$'"), ("emo%00x", "NUL"), ("emo%0Ax", "control character"),
    ("emo%EF%BF%BEx", "non-character"), ("emo%FFx", "not UTF-8"), ("emo//x", "empty level"), ("emo?x", "'?'"),
])
def test_each_kind_of_bad_prefix_is_named(path, problem):
    msg = one_line(pytest.raises(EmoError, parse_url, f"{BROKER}/{path}"))
    assert problem in msg, msg


def test_the_length_limit_counts_the_longest_topic_in_utf8_bytes():
    room = 65535 - len(f"/tracks/{LONGEST_TRACK}".encode())
    assert parse_url(f"{BROKER}/{'é' * (room // 2)}{'x' * (room % 2)}").prefix  # exactly 65,535 bytes: fine
    msg = one_line(pytest.raises(EmoError, parse_url, f"{BROKER}/{'é' * (room // 2)}{'x' * (room % 2 + 1)}"))
    assert "65,536 bytes" in msg and len(msg) < 400


def test_the_password_never_shows_in_the_error():
    msg = one_line(pytest.raises(EmoError, parse_url, "mqtt://emo:hunter2@127.0.0.1/a+b"))
    assert "hunter2" not in msg and "***" in msg


@pytest.mark.parametrize("command", ["infer", "serve"])
def test_the_cli_refuses_a_bad_topic_at_start(command, tmp_path):
    extra = ["--port", "0"] if command == "serve" else []
    r = subprocess.run([bin_path("emo-edge"), command, str(ASTRONAUT), *extra, "--mqtt", f"{BROKER}/%24SYS/emo"],
                       capture_output=True, text=True, timeout=60)
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "'$SYS/emo' starts with '$'" in err and r.stdout == ""


def test_an_unusual_valid_prefix_reaches_a_real_broker(tmp_path):
    """What the check lets through, a real broker takes: non-ASCII letters and spaces in a level."""
    real = pytest.importorskip("test_mqtt", reason="paho-mqtt not installed")
    if real.MOSQUITTO is None:
        pytest.skip("mosquitto not installed (Debian package mosquitto; .ci/run installs it)")
    broker = real.Broker(tmp_path).start()
    try:
        sub = real.Subscriber(broker.port)
        prefix = "küche/emo cam 1"
        url = f"mqtt://127.0.0.1:{broker.port}/{quote(prefix)}"
        with real.emo(ASTRONAUT, "--mqtt", url, "--format", "none", command="infer") as (p, _):
            assert p.wait(60) == 0, "".join(p.lines)
        real.until(lambda: sub.on(f"{prefix}/availability")[-1:] == [b"offline"] and sub.on(f"{prefix}/state"), seconds=10)
        sub.close()
    finally:
        broker.kill()


def test_mqtt_and_analyze_report_the_same_seconds_on_screen_for_a_track_with_a_gap():
    """One ledger, one definition: a face seen for 10 frames, lost for 5 (0.5 s, too short to
    leave), seen for 5 more at 10 fps. MQTT's leave event and analyze's tracks.csv both say
    15 frames x 0.1 s = 1.5 s on screen (not last - first = 1.9 s, which counts the gap)."""
    import json

    import numpy as np

    from emo.edge_runtime.analyze.tracks import consolidate
    from emo.edge_runtime.ledger import TrackLedger

    paho = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt not installed: pip install -e '.[dev]'")
    from emo.edge_runtime.sinks.mqtt import MqttOptions, MqttSink

    seen = [1] * 10 + [0] * 5 + [1] * 5 + [0] * 15
    results = []
    for i, n in enumerate(seen):
        r = frame(i, n)
        r.frame.timestamp = i / 10
        results.append(r)
    RecordingClient.topics, RecordingClient.payloads = [], []
    with mock.patch.object(paho, "Client", RecordingClient):
        sink = MqttSink(MqttOptions(f"{BROKER}/gap", interval=0.0), LABELS, {"emo_version": "test"}, connect_wait=1.0)
        for r in results:
            sink.write(r)
        sink.close()
    leaves = [json.loads(p) for t, p in RecordingClient.payloads if t == "gap/tracks/7" and b'"leave"' in p.encode()]
    assert len(leaves) == 1, RecordingClient.payloads

    ledger = TrackLedger(LABELS)  # as analyze keeps it; analyze's step is stride / fps = 0.1
    for r in results:
        ledger.write(r)
    kept, _, _ = consolidate(list(ledger.tracks.values()), 0.1, min_seconds=0.5, merge_gap=1.0)
    assert len(kept) == 1 and kept[0].frames == leaves[0]["frames"] == 15
    assert leaves[0]["seconds"] == round(kept[0].seconds(0.1), 3) == 1.5
    assert leaves[0]["last_seen"] - leaves[0]["first_seen"] == pytest.approx(1.9)
    assert ledger.step == pytest.approx(0.1) and ledger.seconds(kept[0]) == pytest.approx(1.5)
    assert np.allclose(kept[0].means, [100 / len(LABELS)] * len(LABELS))
