"""`--mqtt` against a real mosquitto broker (Debian package `mosquitto`), started here on a free
port on 127.0.0.1 and stopped after each test, and a real paho-mqtt subscriber.

Skipped, with the reason, where mosquitto is not installed (`.ci/run` installs it when it can).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

from emo.edge_runtime.bench import MjpegTestStream
from emo.edge_runtime.labels import LABELS
from emo.edge_runtime.sinks.mqtt import node_id

from conftest import REPO, bin_path, make_video
from test_serve import get, until

paho = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt not installed: pip install -e '.[dev]'")
MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (Debian package mosquitto; .ci/run installs it)")
ASTRONAUT = REPO / "examples" / "astronaut.png"
NODE = node_id()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto on 127.0.0.1:port; optionally with a password file (user emo, password right)."""

    def __init__(self, tmp: Path, password: bool = False):
        self.port, self.tmp, self.proc = free_port(), tmp, None
        conf = [f"listener {self.port} 127.0.0.1", "persistence false", "log_dest none"]
        if os.geteuid() == 0:
            conf.append("user root")  # as root, mosquitto would switch to a user that cannot read pytest's tmp files
        if password:
            pw = tmp / "passwd"
            pw.write_text("")
            subprocess.run(["mosquitto_passwd", "-b", str(pw), "emo", "right"], check=True, capture_output=True)
            os.chmod(pw, 0o600)
            conf += ["allow_anonymous false", f"password_file {pw}"]
        else:
            conf += ["allow_anonymous true"]
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text("\n".join(conf) + "\n")

    def start(self) -> "Broker":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        until(self._accepts, seconds=10, step=0.05)
        return self

    def _accepts(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Subscriber:
    """A real MQTT client that records every message (topic, payload, retained flag, time)."""

    def __init__(self, port: int, auth: tuple | None = None):
        self.messages: list[tuple[str, bytes, bool, float]] = []
        self.lock = threading.Lock()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{os.getpid()}-{time.monotonic_ns()}")
        if auth:
            self.c.username_pw_set(*auth)
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe("#")
        self.c.on_message = self._on_message
        self.c.reconnect_delay_set(0.2, 1)
        self.c.connect_async("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        until(self.c.is_connected, seconds=10, step=0.05)

    def _on_message(self, c, u, msg) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain), time.monotonic()))

    def on(self, topic: str, since: float = 0.0) -> list[bytes]:
        with self.lock:
            return [m[1] for m in self.messages if m[0] == topic and m[3] >= since]

    def json_on(self, prefix: str, since: float = 0.0) -> list[tuple[str, dict]]:
        """JSON messages under ``prefix`` (Home Assistant's own ``homeassistant/status`` is not ours)."""
        with self.lock:
            return [(m[0], json.loads(m[1])) for m in self.messages
                    if m[0].startswith(prefix) and m[0] != "homeassistant/status" and m[3] >= since and m[1]]

    def publish(self, topic: str, payload: str) -> None:
        self.c.publish(topic, payload).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.kill()


@contextmanager
def emo(*args, command: str = "serve", env: dict | None = None):
    """An emo-edge process (serve by default, on a free port); yields (process, base URL or None)."""
    extra = ["--port", "0"] if command == "serve" else []
    p = subprocess.Popen([bin_path("emo-edge"), command, *map(str, args), *extra], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    lines: list[str] = []
    threading.Thread(target=lambda: [lines.append(x) for x in p.stderr], daemon=True).start()
    p.lines = lines
    base = None
    if command == "serve":
        until(lambda: any("serving http" in x for x in lines) or p.poll() is not None, seconds=30)
        line = next((x for x in lines if "serving http" in x), "")
        base = line.split("serving ")[-1].strip().rstrip("/") if line else None
    try:
        yield p, base
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        time.sleep(0.2)  # let the stderr reader finish


def enter_leave_video(tmp: Path) -> Path:
    """10 fps: 1 s empty room, a person for 2 s, 2 s empty, another person for 2 s, 1.5 s empty."""
    face = cv2.imread(str(ASTRONAUT))[10:330, 80:370]  # her head and shoulders, 290x320, the face 96 px
    empty = np.full((480, 640, 3), 70, np.uint8)

    def person(img, x):
        c = empty.copy()
        c[80:400, x:x + 290] = img
        return c

    frames = [empty] * 10 + [person(face, 40)] * 20 + [empty] * 20 + [person(cv2.flip(face, 1), 300)] * 20 + [empty] * 15
    return make_video(tmp / "enter_leave.avi", frames, fps=10)


def test_discovery_state_and_track_events(broker, tmp_path):
    sub = Subscriber(broker.port)
    try:
        url = f"mqtt://127.0.0.1:{broker.port}/emo/test"
        with emo(enter_leave_video(tmp_path), "--mqtt", url, "--mqtt-interval", "0.05", "--format", "none",
                 command="infer") as (p, _):
            assert p.wait(60) == 0, "".join(p.lines)
        until(lambda: sub.on("emo/test/availability")[-1:] == [b"offline"], seconds=10)
        configs = dict(sub.json_on("homeassistant/"))
        sensors = {t.split("/")[-2] for t in configs if t.startswith(f"homeassistant/sensor/emo_{NODE}/")}
        assert sensors == {"faces", "top_emotion", *(f"emotion_{e}" for e in LABELS)}
        in_view = configs[f"homeassistant/binary_sensor/emo_{NODE}/in_view/config"]
        assert in_view["device_class"] == "occupancy"
        for cfg in configs.values():
            assert cfg["state_topic"] == "emo/test/state" and cfg["availability_topic"] == "emo/test/availability"
            assert cfg["unique_id"].startswith(f"emo_{NODE}_") and cfg["device"]["identifiers"] == [f"emo_{NODE}"]
        states = [s for _, s in sub.json_on("emo/test/state")]
        assert states and all(set(s) == {"faces", "top_emotion", "max", "mean", "frame", "timestamp", "time"} for s in states)
        assert all(list(s["max"]) == list(LABELS) and list(s["mean"]) == list(LABELS) for s in states)
        assert {s["faces"] for s in states} == {0, 1}
        assert all((s["top_emotion"] is None) == (s["faces"] == 0) for s in states)
        events = sub.json_on("emo/test/tracks/")
        kinds = [(t.split("/")[-1], e["event"]) for t, e in events]
        assert [k for _, k in kinds] == ["appear", "leave", "appear", "leave"], kinds
        assert kinds[0][0] == kinds[1][0] != kinds[2][0] == kinds[3][0]
        leaves = [e for _, e in events if e["event"] == "leave"]
        for e in leaves:
            assert 1.5 <= e["seconds"] <= 2.1 and 15 <= e["frames"] <= 20 and e["dominant"] == "happy"
            assert e["seconds"] == pytest.approx(e["frames"] * 0.1, abs=1e-3)  # on screen: frames x 1/fps (ledger.py)
            assert abs(sum(e["mean"].values()) - 100) < 0.5
        assert leaves[0]["first_seen"] == pytest.approx(1.0, abs=0.25) and leaves[1]["first_seen"] == pytest.approx(5.0, abs=0.25)
        # the configs are retained: a client that subscribes later (Home Assistant starting) gets them
        before = {t: c["unique_id"] for t, c in configs.items()}
        sub2 = Subscriber(broker.port)
        until(lambda: len(sub2.json_on("homeassistant/")) >= len(before), seconds=10)
        with sub2.lock:
            assert all(m[2] for m in sub2.messages if m[0].startswith("homeassistant/"))
        sub2.close()
        # and a second run announces the same unique ids
        t0 = time.monotonic()
        with emo(ASTRONAUT, "--mqtt", url, "--format", "none", command="infer") as (p, _):
            assert p.wait(60) == 0
        until(lambda: len(sub.json_on("homeassistant/", since=t0)) >= len(before), seconds=10)
        assert {t: c["unique_id"] for t, c in sub.json_on("homeassistant/", since=t0)} == before
    finally:
        sub.close()


def test_home_assistant_restart_gets_discovery_again(broker):
    sub = Subscriber(broker.port)
    try:
        with emo(ASTRONAUT, "--mqtt", f"mqtt://127.0.0.1:{broker.port}") as (p, base):
            until(lambda: len(sub.json_on("homeassistant/")) >= 10)
            t0 = time.monotonic()
            sub.publish("homeassistant/status", "online")
            until(lambda: len(sub.json_on("homeassistant/", since=t0)) >= 10, seconds=10)
            assert sub.on(f"emo/{NODE}/availability")[-1] == b"online"
    finally:
        sub.close()


def test_broker_killed_and_restarted_mid_run(tmp_path):
    b = Broker(tmp_path).start()
    stream = MjpegTestStream([cv2.imencode(".jpg", cv2.imread(str(ASTRONAUT)))[1].tobytes()], fps=15)
    try:
        with emo(stream.url, "--mqtt", f"mqtt://127.0.0.1:{b.port}/t", "--mqtt-interval", "0.2") as (p, base):
            sub = Subscriber(b.port)
            until(lambda: len(sub.on("t/state")) >= 3)
            frames_before = get(base + "/api/status")[1]["frames"]
            b.kill()
            time.sleep(3.0)
            frames_during = get(base + "/api/status")[1]["frames"]
            metrics = get(base + "/metrics")[1]
            assert frames_during > frames_before + 10  # the pipeline never stopped
            assert "emo_mqtt_connected 0" in metrics
            b.start()
            sub.close()
            sub = Subscriber(b.port)
            t0 = time.monotonic()
            until(lambda: len(sub.on("t/state", since=t0)) >= 3, seconds=40)  # publishing resumed
            assert "emo_mqtt_connected 1" in get(base + "/metrics")[1]
            p.send_signal(signal.SIGTERM)
            assert p.wait(20) == 143
            time.sleep(0.3)
            sub.close()
        summary = next(x for x in p.lines if "made " in x)
        made, published, away, full = (int(w) for w in __import__("re").findall(r"\d+", summary.split("mqtt:")[1])[:4])
        assert made == published + away + full and away >= 5, summary  # at least 3 s of 0.2 s states were dropped
        assert any("lost the broker" in x for x in p.lines) and any("connected to" in x for x in p.lines[1:])
        assert not any("Traceback" in x for x in p.lines)
    finally:
        b.kill()
        stream.close()


def test_broker_down_at_start_then_up(tmp_path):
    b = Broker(tmp_path)  # not started yet
    with emo(ASTRONAUT, "--mqtt", f"mqtt://127.0.0.1:{b.port}/late") as (p, base):
        until(lambda: get(base + "/api/latest")[0] == 200)  # running without a broker
        assert any("not reachable" in x for x in p.lines)
        b.start()
        try:
            sub = Subscriber(b.port)
            until(lambda: sub.on("late/availability")[-1:] == [b"online"], seconds=40)
            sub.close()
        finally:
            b.kill()


def test_wrong_credentials_are_one_line(tmp_path):
    b = Broker(tmp_path, password=True).start()
    try:
        url = f"mqtt://emo@127.0.0.1:{b.port}/sec"
        r = subprocess.run([bin_path("emo-edge"), "infer", str(ASTRONAUT), "--mqtt", url], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "EMO_MQTT_PASSWORD": "wrong"})
        err = r.stderr.strip()
        assert r.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert "refused" in err and "EMO_MQTT_PASSWORD" in err
        sub = Subscriber(b.port, auth=("emo", "right"))
        r = subprocess.run([bin_path("emo-edge"), "infer", str(ASTRONAUT), "--mqtt", url], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "EMO_MQTT_PASSWORD": "right"})
        assert r.returncode == 0, r.stderr
        until(lambda: sub.on("sec/availability")[-1:] == [b"offline"] and sub.on("sec/state"), seconds=10)
        sub.close()
    finally:
        b.kill()


def test_last_will_says_offline_after_sigkill(broker):
    sub = Subscriber(broker.port)
    try:
        with emo(ASTRONAUT, "--mqtt", f"mqtt://127.0.0.1:{broker.port}/will") as (p, base):
            until(lambda: sub.on("will/availability")[-1:] == [b"online"])
            p.kill()  # SIGKILL: no goodbye from emo, the broker sends the last will
            until(lambda: sub.on("will/availability")[-1:] == [b"offline"], seconds=15)
    finally:
        sub.close()


def test_without_the_extra_mqtt_is_one_line():
    code = ("import sys; sys.modules['paho'] = None\n"
            "from emo.edge_runtime.cli import main\n"
            f"sys.argv = ['emo-edge', 'infer', r'{ASTRONAUT}', '--mqtt', 'mqtt://127.0.0.1:1']\n"
            "main()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == 'emo-edge: error: --mqtt needs the MQTT extra: pip install "emo-fer[mqtt]" (paho-mqtt)'
