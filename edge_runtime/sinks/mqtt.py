"""`--mqtt URL`: results to an MQTT broker, with Home Assistant discovery (optional extra `emo-fer[mqtt]`).

Topics under the prefix (the URL's path, or ``emo/<hostname>``; one that would give a topic a broker
drops, such as a wildcard, is refused at start: see :mod:`.topics`):

- ``<prefix>/availability``: ``online``, retained; the last will sets ``offline`` when emo dies.
- ``<prefix>/state``: JSON, when the face count or the top emotion changes and while faces are in
  view, at most every ``--mqtt-interval`` seconds (and once a minute when nothing happens):
  ``{"faces", "top_emotion", "max": {emotion: %}, "mean": {emotion: %}, "frame", "timestamp", "time"}``.
- ``<prefix>/tracks/<id>``: ``{"event": "appear", ...}`` when a face appears and
  ``{"event": "leave", "seconds", "frames", "mean", "dominant", ...}`` when it has been gone
  for ``LEAVE_AFTER`` seconds (or emo stops). The per-track sums are the track ledger's
  (:mod:`emo.edge_runtime.ledger`), as in `emo-edge analyze`: ``seconds`` is the time on screen,
  frames seen x the mean time between processed frames, not ``last_seen - first_seen``.
- Home Assistant discovery (``homeassistant/.../config``, retained), sent on every connect and
  again whenever Home Assistant announces ``online`` on ``homeassistant/status``.

The loop never waits for the broker: the sink puts messages on a bounded queue and a publisher
thread hands them to paho (which runs its own network thread and reconnects with backoff).
Messages made while the broker is away, or when the queue is full, are dropped and counted.
"""
from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

import numpy as np

from ..errors import EmoError
from ..ledger import TrackLedger, TrackStats
from .topics import PASSWORD_ENV, BrokerAddress, check_topic, node_id, parse_url  # noqa: F401 (the API)

LEAVE_AFTER = 1.0  # seconds (of the source's time) a track must be gone before its "leave" event
HEARTBEAT = 60.0  # seconds between state messages when nothing changes
QUEUE_SIZE = 1000
HA_PREFIX = "homeassistant"


@dataclass
class MqttOptions:
    url: str
    interval: float = 1.0
    ha_discovery: bool = True


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def leave_event(track: TrackStats, seconds: float, labels) -> dict:
    """The ``leave`` message of a track (``seconds``: on screen, see :mod:`emo.edge_runtime.ledger`)."""
    means = track.means
    mean = {e: round(float(means[i]), 2) for i, e in enumerate(labels)}
    return {"event": "leave", "track": track.id, "time": _now_iso(), "first_seen": round(track.first, 3),
            "last_seen": round(track.last, 3), "seconds": round(seconds, 3), "frames": track.frames,
            "mean": mean, "dominant": max(mean, key=mean.get)}


class MqttSink:
    """A sink of the frame loop that publishes state, track events and discovery to a broker."""

    def __init__(self, opts: MqttOptions, labels, device_info: dict, connect_wait: float = 5.0):
        try:
            import paho.mqtt.client as paho
        except ImportError:
            raise EmoError('--mqtt needs the MQTT extra: pip install "emo-fer[mqtt]" (paho-mqtt)') from None
        self.opts, self.labels, self.info = opts, list(labels), device_info
        self.addr = parse_url(opts.url)
        self.node = node_id()
        self.topic = lambda leaf: f"{self.addr.prefix}/{leaf}"  # noqa: E731
        for topic in self.discovery() if opts.ha_discovery else ():  # parse_url checked the prefix's own
            check_topic(topic, f"--mqtt: Home Assistant discovery for {self.node}", "use --no-ha-discovery")
        self.published = 0
        self.dropped = {"broker_away": 0, "queue_full": 0}
        self.produced = 0
        self._queue: queue.Queue = queue.Queue(QUEUE_SIZE)
        self.ledger = TrackLedger(self.labels)  # step measured: a live source's frames come when they come
        self._last_state: Optional[dict] = None
        self._last_key = None
        self._last_pub = 0.0
        self._connected = threading.Event()
        self._auth_error: Optional[str] = None
        self._first_result = threading.Event()
        self._was_connected = False

        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"emo-{self.node}-{os.getpid()}")
        if self.addr.user:
            c.username_pw_set(self.addr.user, self.addr.password)
        if self.addr.tls:
            c.tls_set()
        c.will_set(self.topic("availability"), "offline", qos=1, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect, c.on_disconnect, c.on_message = self._on_connect, self._on_disconnect, self._on_message
        c.on_connect_fail = lambda client, userdata: self._first_result.set()  # broker down: do not wait
        self.client = c
        try:
            c.connect_async(self.addr.host, self.addr.port, keepalive=30)
        except (OSError, ValueError) as e:
            raise EmoError(f"--mqtt: cannot use broker {self.addr.host}:{self.addr.port} ({e})") from None
        c.loop_start()
        self._first_result.wait(connect_wait)
        if self._auth_error:
            self._stop_client()
            raise EmoError(f"--mqtt: the broker {self.addr.host}:{self.addr.port} refused the connection "
                           f"({self._auth_error}); check the user in the URL and {PASSWORD_ENV}")
        if not self._connected.is_set():
            _log(f"broker {self.addr.host}:{self.addr.port} is not reachable; retrying in the background with backoff")
        self._publisher = threading.Thread(target=self._publish_loop, name="emo-mqtt", daemon=True)
        self._publisher.start()

    # --- paho callbacks (paho's network thread) -------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason, properties=None) -> None:
        if reason.is_failure:
            if str(reason) in ("Not authorized", "Bad user name or password"):
                self._auth_error = str(reason)
            if self._first_result.is_set():  # at start, the caller reports it
                _log(f"the broker refused the connection: {reason}")
            self._first_result.set()
            return
        self._was_connected = True
        self._connected.set()
        self._first_result.set()
        _log(f"connected to {self.addr.host}:{self.addr.port}; topics under {self.addr.prefix}/")
        client.publish(self.topic("availability"), "online", qos=1, retain=True)
        if self.opts.ha_discovery:
            client.subscribe(f"{HA_PREFIX}/status")
            self._send_discovery()
        if self._last_state is not None:
            client.publish(self.topic("state"), json.dumps(self._last_state), qos=0, retain=True)

    def _on_disconnect(self, client, userdata, flags, reason, properties=None) -> None:
        if self._connected.is_set():
            _log(f"lost the broker ({reason}); retrying with backoff, dropping messages meanwhile")
        self._connected.clear()

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic == f"{HA_PREFIX}/status" and msg.payload.strip().lower() == b"online":
            self._send_discovery()

    # --- Home Assistant discovery ---------------------------------------------------------------
    def discovery(self) -> dict[str, dict]:
        """Discovery topic -> config, with unique ids that stay the same across restarts."""
        dev = {"identifiers": [f"emo_{self.node}"], "name": f"emo {self.node}", "manufacturer": "emo",
               "model": "emo-edge", "sw_version": self.info.get("emo_version", "")}
        common = {"state_topic": self.topic("state"), "availability_topic": self.topic("availability"), "device": dev}
        out = {}

        def add(kind: str, obj: str, **cfg):
            out[f"{HA_PREFIX}/{kind}/emo_{self.node}/{obj}/config"] = {
                "unique_id": f"emo_{self.node}_{obj}", "object_id": f"emo_{self.node}_{obj}", **common, **cfg}

        add("sensor", "faces", name="Faces", value_template="{{ value_json.faces }}", state_class="measurement",
            icon="mdi:account-multiple")
        add("sensor", "top_emotion", name="Top emotion", value_template="{{ value_json.top_emotion or 'none' }}",
            icon="mdi:emoticon-outline")
        for e in self.labels:
            add("sensor", f"emotion_{e}", name=f"{e.capitalize()}", unit_of_measurement="%", state_class="measurement",
                value_template=f"{{{{ value_json.max.{e} }}}}", icon="mdi:percent")
        add("binary_sensor", "in_view", name="Someone in view", device_class="occupancy",
            value_template="{{ 'ON' if value_json.faces > 0 else 'OFF' }}")
        return out

    def _send_discovery(self) -> None:
        for topic, cfg in self.discovery().items():
            self.client.publish(topic, json.dumps(cfg), qos=1, retain=True)

    # --- the sink (the frame loop's thread: never blocks) ---------------------------------------
    def write(self, result) -> None:
        ts = result.frame.timestamp
        faces = {f.track: f for f in result.faces}
        for s in self.ledger.add_frame(result.frame.index, ts, [
                (f.track, f.box, np.array([f.scores[e] for e in self.labels]), f.look) for f in result.faces]):
            f = faces[s.id]
            self._put(f"tracks/{f.track}", {"event": "appear", "track": f.track, "time": _now_iso(),
                                             "timestamp": round(ts, 3), "emotion": f.emotion, "scores": f.scores})
        for s in self.ledger.gone(ts, LEAVE_AFTER):
            self._put(f"tracks/{s.id}", self._leave(s))
        self._maybe_state(result, time.monotonic())

    def _leave(self, track: TrackStats) -> dict:
        return leave_event(track, self.ledger.seconds(track), self.labels)

    def _maybe_state(self, result, now: float) -> None:
        faces = result.faces
        top = max(faces, key=lambda f: f.confidence).emotion if faces else None
        key = (len(faces), top)
        due = now - self._last_pub >= self.opts.interval
        if not (due and (key != self._last_key or faces or now - self._last_pub >= HEARTBEAT)):
            return
        state = {"faces": len(faces), "top_emotion": top,
                 "max": {e: round(max((f.scores[e] for f in faces), default=0.0), 2) for e in self.labels},
                 "mean": {e: round(sum(f.scores[e] for f in faces) / len(faces), 2) if faces else 0.0 for e in self.labels},
                 "frame": result.frame.index, "timestamp": round(result.frame.timestamp, 3), "time": _now_iso()}
        self._last_state, self._last_key, self._last_pub = state, key, now
        self._put("state", state, retain=True)

    def _put(self, leaf: str, payload: dict, retain: bool = False) -> None:
        self.produced += 1
        try:
            self._queue.put_nowait((self.topic(leaf), json.dumps(payload, separators=(",", ":")), retain))
        except queue.Full:
            self.dropped["queue_full"] += 1

    def _publish_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if not self._connected.is_set():
                self.dropped["broker_away"] += 1
                continue
            topic, payload, retain = item
            info = self.client.publish(topic, payload, qos=0, retain=retain)
            if info.rc == 0:
                self.published += 1
            else:
                self.dropped["broker_away"] += 1

    def metrics(self) -> list:
        """Rows for serve's /metrics."""
        return [("emo_mqtt_published", "counter", "MQTT messages handed to the broker.", [("", self.published)]),
                ("emo_mqtt_dropped", "counter", "MQTT messages dropped: broker away, or the queue full.",
                 [(f'{{reason="{k}"}}', v) for k, v in self.dropped.items()]),
                ("emo_mqtt_connected", "gauge", "1 while connected to the broker.", [("", int(self._connected.is_set()))])]

    def close(self) -> None:
        """Leave events for the faces still in view, ``offline``, then disconnect (bounded wait)."""
        for s in self.ledger.pop_all():
            self._put(f"tracks/{s.id}", self._leave(s))
        self._queue.put(None)
        self._publisher.join(5.0)
        if self._connected.is_set():
            try:
                self.client.publish(self.topic("availability"), "offline", qos=1, retain=True).wait_for_publish(2.0)
            except (RuntimeError, ValueError):  # the broker went away just now: the last will says offline
                pass
        self._stop_client()
        _log(f"made {self.produced} messages: published {self.published}, dropped {self.dropped['broker_away']} while "
             f"the broker was away and {self.dropped['queue_full']} for a full queue")

    def _stop_client(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


def _log(msg: str) -> None:
    print(f"emo-edge: mqtt: {msg}", file=sys.stderr, flush=True)
