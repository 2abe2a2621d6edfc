"""`emo-edge fetch` against hostile mirrors on 127.0.0.1: an endless body, a trickle (in the body
and in the headers), a Content-Length that is too big, wrong or unreadable, wrong bytes, and a
SIGTERM or Ctrl-C to a real `emo-edge fetch` mid-download. Each ends within seconds, with one line,
nothing in the cache and no temporary file left behind.

The in-process tests pin a small made-up file in place of YuNet, so they need nothing from ../shared.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import pytest

from emo.edge_runtime import assets
from emo.edge_runtime.errors import EmoError

from conftest import bin_path

PAYLOAD = bytes(range(256)) * 64  # 16 KiB stands in for the pinned file
SERVE_AT_MOST = 8.0  # seconds any hostile handler keeps going, so a test that fails cannot hang


@pytest.fixture
def pinned(monkeypatch, tmp_path) -> Path:
    """YuNet's entry pinned to PAYLOAD (its size and SHA-256), and an empty cache; returns the cache."""
    fake = dataclasses.replace(assets.ASSETS["yunet"], sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD),
                               max_bytes=4 * len(PAYLOAD))
    monkeypatch.setitem(assets.ASSETS, "yunet", fake)
    monkeypatch.setenv("EMO_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@contextmanager
def mirror(reply: Callable[[http.server.BaseHTTPRequestHandler, Callable[[], bool]], None]):
    """An HTTP server on 127.0.0.1 whose GET runs ``reply(handler, going)``; ``going()`` turns
    false when the test is over or SERVE_AT_MOST has passed. Yields the file's URL."""
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            t0 = time.monotonic()
            try:
                reply(self, lambda: not stop.is_set() and time.monotonic() - t0 < SERVE_AT_MOST)
            except OSError:  # the client hung up: what a well-behaved fetch does to a hostile mirror
                pass

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads, srv.block_on_close = True, False
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/face.onnx"
    finally:
        stop.set()
        srv.shutdown()
        srv.server_close()


def headers(h, length=None, extra=()) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/octet-stream")
    if length is not None:
        h.send_header("Content-Length", str(length))
    for k, v in extra:
        h.send_header(k, v)
    h.end_headers()


def endless(h, going) -> None:
    headers(h)
    while going():
        h.wfile.write(b"\0" * 65536)


def trickle(h, going) -> None:
    headers(h, len(PAYLOAD))
    for i in range(len(PAYLOAD)):
        if not going():
            return
        h.wfile.write(PAYLOAD[i:i + 1])
        h.wfile.flush()
        time.sleep(1.0)


def trickled_headers(h, going) -> None:
    h.wfile.write(b"HTTP/1.1 200 OK\r\n")
    while going():
        h.wfile.write(b"X")  # one long header line, a byte a second
        h.wfile.flush()
        time.sleep(1.0)


def announce(length: str, body: bytes = PAYLOAD, twice: str | None = None):
    def reply(h, going) -> None:
        h.send_response(200)
        h.send_header("Content-Length", length)
        if twice is not None:
            h.send_header("Content-Length", twice)
        h.end_headers()
        h.wfile.write(body)
    return reply


def refused(url: str, *needles: str, deadline: float = 30.0) -> str:
    with pytest.raises(EmoError) as e:
        assets.fetch("yunet", url, deadline=deadline)
    msg = str(e.value)
    assert "\n" not in msg and "nothing was saved" in msg, msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def assert_empty(cache: Path) -> None:
    assert not cache.exists() or list(cache.iterdir()) == [], list(cache.iterdir())


def test_an_endless_body_stops_at_the_size_of_the_pinned_file(pinned):
    t0 = time.monotonic()
    with mirror(endless) as url:
        refused(url, f"more than the {len(PAYLOAD):,} bytes")
    assert time.monotonic() - t0 < 3
    assert_empty(pinned)


def test_another_release_may_be_up_to_max_bytes_and_no_more(pinned):
    with mirror(endless) as url:
        with pytest.raises(EmoError, match=f"more than the {4 * len(PAYLOAD):,} bytes"):
            assets.fetch("yunet", url, sha256="ab" * 32)
    assert_empty(pinned)


@pytest.mark.parametrize("reply", [trickle, trickled_headers], ids=["body", "headers"])
def test_a_trickling_mirror_meets_the_deadline(pinned, reply):
    t0 = time.monotonic()
    with mirror(reply) as url:
        refused(url, "did not arrive within 1 s", "--deadline", deadline=1)
    assert time.monotonic() - t0 < 3
    assert_empty(pinned)


def test_the_deadline_holds_off_the_main_thread_too(pinned):
    """Signals reach the main thread only: elsewhere the check between reads ends the trickle."""
    out: list = []
    with mirror(trickle) as url:
        t = threading.Thread(target=lambda: out.append(pytest.raises(EmoError, assets.fetch, "yunet", url, deadline=0.5)))
        t.start()
        t.join(5)
    assert not t.is_alive() and "did not arrive" in str(out[0].value)
    assert_empty(pinned)


@pytest.mark.parametrize("reply, needle", [
    (announce(str(10 ** 12)), "announces 1,000,000,000,000 bytes"),  # refused before a byte is read
    (announce("lots"), "invalid Content-Length"),
    (announce(str(len(PAYLOAD)), twice="10"), "invalid Content-Length"),
], ids=["too-big", "unreadable", "two-values"])
def test_a_content_length_no_copy_can_have_is_refused(pinned, reply, needle):
    with mirror(reply) as url:
        refused(url, needle)
    assert_empty(pinned)


@pytest.mark.parametrize("reply, needle", [
    (announce(str(len(PAYLOAD) // 2)), "SHA-256"),  # fewer bytes than the file: the checksum refuses them
    (announce(str(len(PAYLOAD)), PAYLOAD[:100]), "cut after 100 of"),  # more than were sent
    (announce(str(len(PAYLOAD)), PAYLOAD[::-1]), "SHA-256"),  # the right size, the wrong bytes
], ids=["short", "cut", "wrong-bytes"])
def test_wrong_lengths_and_wrong_bytes_save_nothing(pinned, reply, needle):
    with mirror(reply) as url:
        with pytest.raises(EmoError, match=needle):
            assets.fetch("yunet", url)
    assert_empty(pinned)


def test_the_pinned_file_itself_still_arrives(pinned):
    with mirror(announce(str(len(PAYLOAD)))) as url:
        path = assets.fetch("yunet", url, deadline=5)
    assert path.read_bytes() == PAYLOAD and os.listdir(pinned) == [path.name]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_download_leaves_no_temporary_file(tmp_path, sig):
    cache = tmp_path / "cache"
    with mirror(trickle) as url:  # the real YuNet entry: 232,589 bytes announced, a byte a second
        p = subprocess.Popen([bin_path("emo-edge"), "fetch", "yunet", "--url", url], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "EMO_CACHE_DIR": str(cache)})
        try:
            t0 = time.monotonic()
            while not (cache.is_dir() and os.listdir(cache)) and time.monotonic() - t0 < 20 and p.poll() is None:
                time.sleep(0.05)
            assert [n for n in os.listdir(cache) if n.startswith(".emo-tmp-")], "the download never started"
            p.send_signal(sig)
            out, err = p.communicate(timeout=10)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    name = signal.Signals(sig).name
    assert p.returncode == 128 + sig, (p.returncode, err)
    assert err.strip() == f"emo-edge: fetch yunet stopped by {name}; nothing was saved", err
    assert_empty(cache)


def test_the_cli_takes_a_deadline(tmp_path):
    with mirror(trickle) as url:
        r = subprocess.run([bin_path("emo-edge"), "fetch", "yunet", "--url", url, "--deadline", "1"], capture_output=True,
                           text=True, timeout=30, env={**os.environ, "EMO_CACHE_DIR": str(tmp_path)})
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "did not arrive within 1 s" in err, err
    assert os.listdir(tmp_path) == []
