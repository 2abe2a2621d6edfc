"""`emo-edge label DIR`: the folder and its log, the HTTP API (in-process server on a free port),
the command (a real process: errors, SIGTERM, undo across a restart) and the page in a real
headless Chromium driven by real key presses over the DevTools protocol (--remote-debugging-pipe).

Every test makes its own folder of crops; every loop that waits is bounded in count and time.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from emo.edge_runtime.dataset import load_folder
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.labels import LABELS
from emo.edge_runtime.serve import label_store
from emo.edge_runtime.serve.label import LabelServer
from emo.edge_runtime.serve.label_store import DISCARDED, LOG_NAME, LabelStore, Move, replay
from emo.edge_runtime.serve.state import ServeOptions

from conftest import bin_path, run_cli, synthetic_face

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CROPS = {"happy": ["g1_a.png", "g1_b.png", "g2_c.png"], "neutral": ["g2_d.png"], "sad": [], "surprise": ["g3_e.jpg"]}


def make_crops(root: Path, crops: dict = CROPS) -> Path:
    """Folders of 96x96 face crops as `emo-edge collect` writes them, with a faces.csv beside them."""
    rows = ["file,group,predicted"]
    for i, (folder, names) in enumerate(crops.items()):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for j, name in enumerate(names):
            face = cv2.resize(synthetic_face(LABELS.index(folder), np.random.default_rng(10 * i + j)), (96, 96),
                              interpolation=cv2.INTER_NEAREST)
            (root / folder / name).write_bytes(cv2.imencode(Path(name).suffix, face)[1].tobytes())
            rows.append(f"{folder}/{name},{name.split('_')[0]},{folder}")
    (root / "faces.csv").write_text("\n".join(rows) + "\n")
    return root


def on_disk(root: Path) -> set[str]:
    """Every face in DIR's folders, as ``folder/file``."""
    return {f"{d.name}/{f.name}" for d in root.iterdir() if d.is_dir() for f in d.iterdir()}


def log_of(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / LOG_NAME).read_text().splitlines()]


def request(url: str, body=None, headers: dict | None = None, method: str | None = None, timeout: float = 10):
    """(status, parsed JSON or bytes); ``body``: a dict is sent as JSON (POST), bytes as they are."""
    hdrs = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=body, headers=hdrs, method=method or ("POST" if body is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            code, ctype, data = r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        code, ctype, data = e.code, e.headers.get("Content-Type", ""), e.read()
    return code, json.loads(data) if "json" in ctype else data


@contextlib.contextmanager
def labelling(root: Path, token: str = ""):
    """An in-process label server on a free port: yields its base URL."""
    store = LabelStore(root)
    store.finish_last()
    server = LabelServer(store, ServeOptions(port=0, token=token or None))
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.close()


@contextlib.contextmanager
def label_cli(root: Path, *args: str):
    """`emo-edge label ROOT --port 0 ARGS` as a process: yields (base URL, process); SIGTERM afterwards."""
    p = subprocess.Popen([bin_path("emo-edge"), "label", str(root), "--port", "0", *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        head, deadline = [], time.monotonic() + 30
        while time.monotonic() < deadline and p.poll() is None:
            head.append(p.stderr.readline())
            if "serving http" in head[-1]:
                break
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", head[-1] if head else "")
        assert m, "".join(head) + (p.stderr.read() if p.poll() is not None else "")
        p.head = head
        yield f"http://127.0.0.1:{m.group(1)}", p
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.captured = p.communicate(timeout=20)[1]
        except subprocess.TimeoutExpired:
            p.kill()
            p.captured = p.communicate()[1]


def move(base: str, folder: str, file: str, to: str, q: str = ""):
    return request(f"{base}/api/move{q}", {"folder": folder, "file": file, "to": to})


def test_lists_counts_and_serves_each_face(tmp_path):
    root = make_crops(tmp_path / "faces")
    with labelling(root) as base:
        code, st = request(base + "/api/state")
        assert code == 200 and st["labels"] == list(LABELS) and st["keys"]["1"] == "angry" and st["keys"]["7"] == "neutral"
        assert st["counts"] == {**{n: 0 for n in LABELS}, "happy": 3, "neutral": 1, "surprise": 1, DISCARDED: 0}
        assert st["keys"]["x"] == DISCARDED and st["undoable"] == 0 and st["last"] is None
        assert request(base + "/api/files?folder=happy")[1]["files"] == CROPS["happy"]
        assert request(base + "/api/files?folder=angry")[1]["files"] == []
        code, data = request(base + "/image?folder=happy&file=g1_b.png")
        assert code == 200 and data == (root / "happy" / "g1_b.png").read_bytes()
        code, page = request(base + "/")
        assert code == 200 and b"image-rendering: pixelated" in page and b"/api/move" in page
        assert request(base + "/healthz")[0] == 200


def test_move_discard_undo_and_the_log_replays_to_the_folders(tmp_path):
    root = make_crops(tmp_path / "faces")
    before, csv = on_disk(root), (root / "faces.csv").read_bytes()
    with labelling(root) as base:
        code, r = move(base, "happy", "g1_a.png", "sad")
        assert code == 200 and r["move"]["src"] == "happy/g1_a.png" and r["move"]["dst"] == "sad/g1_a.png"
        assert r["counts"]["happy"] == 2 and r["counts"]["sad"] == 1 and (root / "sad" / "g1_a.png").is_file()
        code, r = move(base, "happy", "g1_b.png", DISCARDED)
        assert code == 200 and (root / DISCARDED / "g1_b.png").is_file() and r["counts"][DISCARDED] == 1
        code, r = request(base + "/api/undo", {})
        assert code == 200 and r["move"]["op"] == "undo" and r["move"]["undoes"] == 2 and (root / "happy" / "g1_b.png").is_file()
        assert r["undoable"] == 1 and r["last"]["dst"] == "sad/g1_a.png"
        assert move(base, "happy", "g1_a.png", "fear")[0] == 404  # moved already
        assert move(base, "sad", "g1_a.png", "sad")[0] == 409  # where it is
        # a face whose name is taken where it goes gets a free name: nothing is ever overwritten
        (root / "angry").mkdir()
        shutil.copy(root / "neutral" / "g2_d.png", root / "angry" / "g2_c.png")
        code, r = move(base, "happy", "g2_c.png", "angry")
        assert code == 200 and r["move"]["dst"] == "angry/g2_c-2.png"
        # random moves and undos (some refused): the log, replayed on the folders as they were, gives the folders now
        rng = random.Random(0)
        for _ in range(40):
            if rng.random() < 0.3:
                request(base + "/api/undo", {})
            else:
                folder = rng.choice([*LABELS, DISCARDED])
                files = request(f"{base}/api/files?folder={folder}")[1]["files"]
                if files:
                    assert move(base, folder, rng.choice(files), rng.choice([*LABELS, DISCARDED]))[0] in (200, 409)
        while request(base + "/api/undo", {})[0] == 200:  # undo reaches back to the start
            pass
        assert request(base + "/api/undo", {})[1] == {"error": "nothing to undo"}
    records = log_of(root)
    assert [r["id"] for r in records] == list(range(1, len(records) + 1)) and len(records) > 20
    moves = [Move(**r) for r in records]
    added = {"angry/g2_c.png"}  # the copy made above, outside label
    assert replay(moves, before | added) == on_disk(root) == before | added
    assert (root / "faces.csv").read_bytes() == csv  # collect's record of its predictions is left as it was
    # the folder trains as it is: _discarded/ is set aside, not a class
    (root / DISCARDED).mkdir(exist_ok=True)
    shutil.copy(root / "neutral" / "g2_d.png", root / DISCARDED / "x.png")
    assert len(load_folder(root, "all").labels) == len(before | added)


def test_undo_across_a_restart_and_sigterm_stops_cleanly(tmp_path):
    root = make_crops(tmp_path / "faces")
    with label_cli(root) as (base, p):
        assert move(base, "happy", "g1_a.png", "angry")[0] == 200
        assert move(base, "neutral", "g2_d.png", DISCARDED)[0] == 200
        p.send_signal(signal.SIGTERM)
        p.wait(20)
    assert p.returncode == 143 and "stopped by SIGTERM; 2 moves" in p.captured and "Traceback" not in p.captured
    with label_cli(root) as (base, p):
        assert "undo: 2 moves" in "".join(p.head)
        assert request(base + "/api/state")[1]["last"]["dst"] == f"{DISCARDED}/g2_d.png"
        assert request(base + "/api/undo", {})[0] == 200 and (root / "neutral" / "g2_d.png").is_file()
        assert request(base + "/api/undo", {})[0] == 200 and (root / "happy" / "g1_a.png").is_file()
        assert request(base + "/api/undo", {})[0] == 409
        p.send_signal(signal.SIGINT)
        p.wait(20)
    assert p.returncode == 130 and "Traceback" not in p.captured
    assert [(r["op"], r.get("undoes")) for r in log_of(root)] == [("move", None), ("move", None), ("undo", 2), ("undo", 1)]


def test_a_crash_between_the_log_and_the_rename_loses_nothing(tmp_path):
    root = make_crops(tmp_path / "faces")
    before = on_disk(root)
    # the process died after fsyncing the record of move 2 but before its rename; then a torn record
    records = [{"id": 1, "op": "move", "src": "happy/g1_a.png", "dst": "fear/g1_a.png"},
               {"id": 2, "op": "move", "src": "happy/g1_b.png", "dst": "sad/g1_b.png"}]
    (root / "fear").mkdir()
    os.replace(root / "happy" / "g1_a.png", root / "fear" / "g1_a.png")
    (root / LOG_NAME).write_text("".join(json.dumps(r) + "\n" for r in records) + '{"id": 3, "op": "mo')
    store = LabelStore(root)
    assert "finished the move" in store.finish_last() and (root / "sad" / "g1_b.png").is_file()
    assert (root / LOG_NAME).read_text().endswith("}\n") and len(log_of(root)) == 2  # the torn record is gone
    assert replay(store.moves, before) == on_disk(root)
    assert store.undo().dst == "happy/g1_b.png" and store.undo().dst == "happy/g1_a.png" and on_disk(root) == before
    assert [r["op"] for r in log_of(root)] == ["move", "move", "undo", "undo"]
    # a rename that fails is logged as undone at once: log and folders still agree
    real = os.replace
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(label_store.os, "replace", lambda a, b: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
        with pytest.raises(label_store.Refused, match="nothing was moved"):
            store.move("happy", "g2_c.png", "angry")
    assert label_store.os.replace is real and replay(LabelStore(root).moves, before) == on_disk(root) == before
    assert LabelStore(root).done == [] and log_of(root)[-1]["op"] == "undo"
    # a log line that is not a record, in the middle: one line that says what to do
    (root / LOG_NAME).write_text('garbage\n{"id": 1, "op": "move", "src": "a/b.png", "dst": "c/b.png"}\n')
    with pytest.raises(EmoError, match="line 1 is not a label record"):
        LabelStore(root)


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        with contextlib.suppress(socket.timeout):
            while chunk := s.recv(65536):
                out += chunk
    return out


def test_hostile_requests_move_nothing(tmp_path):
    root = make_crops(tmp_path / "faces")
    outside = tmp_path / "secret.png"
    outside.write_bytes((root / "happy" / "g1_a.png").read_bytes())
    os.symlink(outside, root / "happy" / "link.png")  # a link out of DIR is neither listed nor moved
    before = on_disk(root)
    with labelling(root) as base:
        assert "link.png" not in request(base + "/api/files?folder=happy")[1]["files"]
        for folder, file in (("happy", "link.png"), ("happy", "../faces.csv"), ("happy", "../../secret.png"),
                             ("happy", "/etc/passwd"), ("..", "secret.png"), ("happy/..", "faces.csv"), ("happy", ".."),
                             ("happy", "g1_a.png/"), ("happy", "g1_a.png\x00.png"), ("Happy", "g1_a.png"), ("", "g1_a.png")):
            assert move(base, folder, file, "sad")[0] in (404, 400), (folder, file)
            q = urllib.parse.urlencode({"folder": folder, "file": file})
            assert request(f"{base}/image?{q}")[0] in (404, 400), (folder, file)
        for bad in ({"folder": "happy", "file": "g1_a.png", "to": "../x"}, {"folder": "happy", "file": "g1_a.png"},
                    {"folder": "happy", "file": ["g1_a.png"], "to": "sad"}, {"folder": "happy", "file": "g1_a.png", "to": "faces"}):
            assert request(base + "/api/move", bad)[0] == 400, bad
        port = int(base.rsplit(":", 1)[1])
        body = b'{"folder": "happy", "file": "g1_a.png", "to": "sad"}'
        post = lambda headers: _raw(port, b"POST /api/move HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n" + body)  # noqa: E731
        json_len = b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        for headers, code in ((b"Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(body), 415),  # a cross-site form
                              (b"Content-Type: application/json\r\n", 411),
                              (b"Content-Type: application/json\r\nContent-Length: 99999\r\n", 413),
                              (b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n", 411),
                              (json_len + b"Origin: http://evil.example\r\n", 403)):
            answer = post(headers)
            assert answer.startswith(b"HTTP/1.1 %d" % code), (headers, answer[:80])
        smuggled = b"GET /api/undo HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"  # a refused body is never read as a request
        answer = _raw(port, b"POST /api/move HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                      % len(smuggled) + smuggled)
        assert answer.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in answer, answer
        assert _raw(port, b"POST /api/move HTTP/1.1\r\nHost: evil.example:80\r\n" + json_len + b"\r\n" + body).startswith(b"HTTP/1.1 403")
        assert _raw(port, b"GET /api/state HTTP/1.1\r\nHost: rebound.example\r\n\r\n").startswith(b"HTTP/1.1 403")
        assert b" 414 " in _raw(port, b"GET /api/files?folder=" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")[:40]
        assert b" 431 " in _raw(port, b"POST /api/move HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n")[:40]
        assert request(base + "/api/move")[0] == 405 and request(base + "/api/state", {})[0] == 405
        assert request(base + "/api/state", method="DELETE")[0] == 405
        for path in ("/etc/passwd", "/../faces.csv", "/happy/g1_a.png", "/faces.csv", f"/{LOG_NAME}", "/image/../faces.csv"):
            assert request(base + path)[0] == 404, path
        assert request(base + "/api/files?folder=..")[0] == 400 and request(base + "/api/files?folder=happy&folder=sad")[0] == 400
        assert on_disk(root) == before and outside.is_file() and not (root / LOG_NAME).exists()
        assert move(base, "happy", "g1_a.png", "sad")[0] == 200  # and it still works
    (root / "sad").rename(root / "sad-real")
    os.symlink(root / "sad-real", root / "sad")  # a class folder that is a link: refused at start
    with pytest.raises(EmoError, match="symbolic link"):
        LabelStore(root)


def test_the_token_is_required_everywhere_but_healthz(tmp_path):
    root = make_crops(tmp_path / "faces")
    with labelling(root, token="s3cret") as base:
        for path in ("/", "/api/state", "/api/files?folder=happy", "/image?folder=happy&file=g1_a.png"):
            assert request(base + path)[0] == 401, path
            assert request(base + path + ("&" if "?" in path else "?") + "token=wrong")[0] == 401, path
            assert request(base + path + ("&" if "?" in path else "?") + "token=s3cret")[0] == 200, path
        assert request(base + "/api/state", headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert move(base, "happy", "g1_a.png", "sad")[0] == 401 and request(base + "/api/undo", {})[0] == 401
        assert request(base + "/healthz")[0] == 200 and (root / "happy" / "g1_a.png").is_file()
        assert move(base, "happy", "g1_a.png", "sad", "?token=s3cret")[0] == 200


def test_one_line_errors_and_the_network_warning(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    (empty / "happy").mkdir(parents=True)
    (tmp_path / "other" / "photos").mkdir(parents=True)
    (tmp_path / "file").write_text("x")
    for target, words in ((tmp_path / "missing", "does not exist"), (tmp_path / "other", "no emotion folders"),
                          (empty, "no images"), (tmp_path / "file", "is not a folder")):
        r = run_cli("emo-edge", "label", target, "--port", "0", timeout=60)
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr
    root = make_crops(tmp_path / "faces")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = run_cli("emo-edge", "label", root, "--port", taken.getsockname()[1], timeout=60)
    assert r.returncode == 2 and "cannot listen on 127.0.0.1" in r.stderr and "Traceback" not in r.stderr, r.stderr
    real_access = os.access
    monkeypatch.setattr(label_store.os, "access", lambda p, mode: False if Path(p) == root / "happy" else real_access(p, mode))
    with pytest.raises(EmoError, match="happy is not writable"):
        LabelStore(root)
    monkeypatch.undo()
    p = subprocess.Popen([bin_path("emo-edge"), "label", str(root), "--host", "0.0.0.0", "--port", "0"],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        lines = [p.stderr.readline() for _ in range(3)]
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=20)
    assert "without --token" in lines[0] and "serving http://0.0.0.0:" in lines[2], lines


# --- a real browser ------------------------------------------------------------------------------

class DevTools:
    """Headless Chromium driven over --remote-debugging-pipe: it reads NUL-terminated JSON messages
    on its fd 3 and writes them on its fd 4. A small Python shim puts the pipes there (no preexec_fn)."""

    SHIM = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); os.execv(sys.argv[3], sys.argv[3:])"

    def __init__(self, profile: Path):
        to_chrome_r, self.w = os.pipe()
        self.r, from_chrome_w = os.pipe()
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]  # above 4: no clash
        for fd in (to_chrome_r, from_chrome_w):
            os.close(fd)
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen([sys.executable, "-c", self.SHIM, *map(str, ends), *args], pass_fds=ends,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in ends:
            os.close(fd)
        self.buf, self.next_id, self.session = b"", 0, None

    def call(self, method: str, timeout: float = 20, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # answers come in order among events; skip the events
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                m = json.loads(raw)
                if m.get("id") == self.next_id:
                    assert "error" not in m, (method, m["error"])
                    return m["result"]
            if select.select([self.r], [], [], max(0.0, deadline - time.monotonic()))[0]:
                chunk = os.read(self.r, 1 << 16)
                assert chunk, "Chromium closed its DevTools pipe"
                self.buf += chunk
        raise AssertionError(f"no answer to {method} within {timeout} s")

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url=url)["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def page(self) -> dict:
        """The page's body data attributes (folder, file, ready)."""
        value = self.call("Runtime.evaluate", expression="JSON.stringify(document.body ? document.body.dataset : {})",
                          returnByValue=True)["result"].get("value")
        return json.loads(value or "{}")

    def press(self, key: str) -> None:
        code = {"ArrowRight": ("ArrowRight", 39), "ArrowLeft": ("ArrowLeft", 37), " ": ("Space", 32)}.get(key)
        if code is None:
            code = (f"Digit{key}", ord(key)) if key.isdigit() else (f"Key{key.upper()}", ord(key.upper()))
        common = {"key": key, "code": code[0], "windowsVirtualKeyCode": code[1], "nativeVirtualKeyCode": code[1]}
        self.call("Input.dispatchKeyEvent", type="keyDown", **common)
        if len(key) == 1:
            self.call("Input.dispatchKeyEvent", type="char", text=key, unmodifiedText=key, **common)
        self.call("Input.dispatchKeyEvent", type="keyUp", **common)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for fd in (self.w, self.r):
            with contextlib.suppress(OSError):
                os.close(fd)


def wait_for(cond, seconds: float = 15, step: float = 0.1):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"not within {seconds} s")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package chromium; .ci/run installs it)")
def test_the_page_in_a_real_browser_moves_faces_by_key(tmp_path):
    root = make_crops(tmp_path / "faces")
    browser = None
    with label_cli(root, "--token", "k3y") as (base, p):
        try:
            browser = DevTools(tmp_path / "profile")
            browser.open(base + "/?token=k3y")
            shown = lambda: browser.page().get("file")  # noqa: E731
            assert wait_for(lambda: browser.page().get("ready") and shown(), 30) == "g1_a.png"  # happy/, the first with faces
            assert browser.page()["folder"] == "happy"
            browser.press("5")  # sad
            wait_for(lambda: (root / "sad" / "g1_a.png").is_file())
            assert wait_for(lambda: shown() == "g1_b.png")  # the next face, once the answer came
            browser.press("x")
            wait_for(lambda: (root / DISCARDED / "g1_b.png").is_file())
            browser.press("u")
            wait_for(lambda: (root / "happy" / "g1_b.png").is_file())
            assert wait_for(lambda: shown() == "g1_b.png")  # the undone face is shown again
            browser.press("ArrowRight")  # skip it: it stays where it is
            assert wait_for(lambda: shown() == "g2_c.png")
            browser.press("1")  # angry
            wait_for(lambda: (root / "angry" / "g2_c.png").is_file())
            count = "document.querySelector('[data-folder=angry]').dataset.count"
            assert wait_for(lambda: browser.call("Runtime.evaluate", expression=count)["result"]["value"] == "1")
            browser.call("Runtime.evaluate", expression="document.getElementById('undo').click()")  # the mouse's way
            wait_for(lambda: (root / "happy" / "g2_c.png").is_file())
        finally:
            if browser is not None:
                browser.close()
    assert [(r["op"], r["src"], r["dst"]) for r in log_of(root)] == [
        ("move", "happy/g1_a.png", "sad/g1_a.png"), ("move", "happy/g1_b.png", f"{DISCARDED}/g1_b.png"),
        ("undo", f"{DISCARDED}/g1_b.png", "happy/g1_b.png"), ("move", "happy/g2_c.png", "angry/g2_c.png"),
        ("undo", "angry/g2_c.png", "happy/g2_c.png")]
    assert set(os.listdir(root / "happy")) == {"g1_b.png", "g2_c.png"} and "Traceback" not in p.captured
