"""The service: `deploy/emo-serve.service` gives its user a cache it can read (the user has no home,
and ProtectHome hides /home), and when `--detector auto` runs Haar because YuNet is not in the
cache, serve and infer say so in one line: the folder searched and the command that fills it."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from emo.edge_runtime.assets import ASSETS

from conftest import REPO, YUNET, bin_path, run_cli

UNIT = REPO / "deploy" / "emo-serve.service"
ASTRONAUT = REPO / "examples" / "astronaut.png"


def unit_settings(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file as {section: [(key, value), ...]}, keys in order (systemd allows repeats)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, eq, value = line.partition("=")
        assert current is not None and eq and key.strip().isidentifier(), f"{path.name}:{n}: not a setting: {raw}"
        current.append((key.strip(), value.strip()))
    return sections


def test_the_unit_gives_the_service_a_cache_it_can_read():
    service = unit_settings(UNIT)["Service"]
    env = [v.split("=", 1) for k, v in service if k == "Environment"]
    cache = dict(env).get("EMO_CACHE_DIR")
    state = [v for k, v in service if k == "StateDirectory"]
    assert cache == "/var/lib/emo" and state == ["emo"], (env, state)  # StateDirectory=emo is /var/lib/emo
    assert ("ProtectHome", "yes") in service and ("User", "emo") in service  # why ~/.cache cannot be it
    assert f"EMO_CACHE_DIR={cache}" in UNIT.read_text().split("[Unit]")[0]  # the install steps fetch into it
    assert f"sudo EMO_CACHE_DIR={cache} /opt/emo/venv/bin/emo-edge fetch yunet" in (REPO / "README.md").read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (systemd)")
def test_systemd_accepts_the_unit(tmp_path):
    """systemd's own check, with ExecStart pointed at this emo-edge (the unit's /opt path is the Pi's)."""
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/emo/venv/bin/emo-edge", bin_path("emo-edge")))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    ours = [x for x in (r.stdout + r.stderr).splitlines() if UNIT.name in x]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr


def fallback_lines(stderr: str, cache: Path) -> list[str]:
    lines = [x for x in stderr.splitlines() if "detector: haar" in x]
    for x in lines:
        assert str(cache) in x and f"EMO_CACHE_DIR={cache} emo-edge fetch yunet" in x, x
    return lines


def test_serve_says_at_start_that_it_runs_haar_and_why(tmp_path):
    cache = tmp_path / "var-lib-emo"
    p = subprocess.Popen([bin_path("emo-edge"), "serve", str(ASTRONAUT), "--port", "0"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "EMO_CACHE_DIR": str(cache)})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(p.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not fallback_lines("".join(lines), cache) and p.poll() is None and time.monotonic() < deadline:
            if "serving http" in "".join(lines):  # the line comes right after this one
                deadline = min(deadline, time.monotonic() + 5)
            time.sleep(0.05)
        assert len(fallback_lines("".join(lines), cache)) == 1, "".join(lines)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(20)
        reader.join(5)
    assert len(fallback_lines("".join(lines), cache)) == 1 and "Traceback" not in "".join(lines)


def test_infer_says_it_ran_haar_and_is_quiet_with_yunet_or_a_chosen_detector(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "EMO_CACHE_DIR": str(cache)}
    r = run_cli("emo-edge", "infer", ASTRONAUT, env=env)
    assert r.returncode == 0 and len(fallback_lines(r.stderr, cache)) == 1, r.stderr
    r = run_cli("emo-edge", "infer", ASTRONAUT, "--detector", "haar", env=env)
    assert r.returncode == 0 and not fallback_lines(r.stderr, cache), r.stderr
    if YUNET is not None and YUNET.is_file():
        cache.mkdir()
        shutil.copy(YUNET, cache / ASSETS["yunet"].file)
        r = run_cli("emo-edge", "infer", ASTRONAUT, env=env)
        assert r.returncode == 0 and json.loads(r.stdout.splitlines()[0])["detector"] == "yunet" and not fallback_lines(r.stderr, cache), r.stderr
