"""The wheel a user installs: `python -m build` makes it, it holds the runtime (bundled models and
the web page included) and nothing of the project's history, and it installs into a clean venv
where `emo-edge infer` works without PyTorch.

The wheel is built once per run, from a copy of the working tree (so no stale `build/` folder or
egg-info of the checkout can leak into it), with the current environment's setuptools
(`--no-isolation`: no download). The clean-venv install fetches the base dependencies from the
package index and skips, saying so, when pip cannot reach one."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

DIST = "emo-fer"
PACKAGES = {"edge_runtime": "emo/edge_runtime", "train": "emo/train", "export": "emo/export"}
LEFT_OUT = {".git", ".venv", "venv", "build", "dist", "runs", "logs", "__pycache__", ".pytest_cache", ".hypothesis"}
INSTALL_TIMEOUT = 300.0  # seconds for venv + pip install + the first inference
# what pip prints when it cannot reach an index (or has none): the environment, not the wheel
NO_INDEX = ("Failed to establish a new connection", "Temporary failure in name resolution", "Network is unreachable",
            "Max retries exceeded", "Connection refused", "ProxyError", "Read timed out", "NewConnectionError",
            "(from versions: none)", "Could not fetch URL")


def _copy_ignore(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n in LEFT_OUT or n.endswith((".egg-info", ".pyc"))}


def _tail(text: str, n: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build", reason="the `build` package is not installed: pip install -e '.[dev]'")
    tmp = tmp_path_factory.mktemp("wheel")
    src, out = tmp / "src", tmp / "dist"
    shutil.copytree(REPO, src, ignore=_copy_ignore, symlinks=True)
    # sdist first, then the wheel from the unpacked sdist: the way `python -m build` always builds
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                       capture_output=True, text=True, timeout=300)
    if r.returncode and "Missing dependencies" in r.stdout + r.stderr:
        pytest.skip("this environment lacks the build requirements (pyproject.toml [build-system]): "
                    + _tail(r.stdout + r.stderr, 3).replace("\n", " "))
    assert r.returncode == 0, f"python -m build failed:\n{_tail(r.stdout + r.stderr)}"
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1 and len(list(out.glob("*.tar.gz"))) == 1, sorted(p.name for p in out.iterdir())
    return wheels[0]


def _package_files() -> set[str]:
    """Every file of the three packages in the source tree, as the wheel names it."""
    found = set()
    for folder, pkg in PACKAGES.items():
        for p in (REPO / folder).rglob("*"):
            rel = p.relative_to(REPO / folder)
            if p.is_file() and not any(part in LEFT_OUT for part in rel.parts) \
                    and p.suffix != ".pyc" and not p.name.endswith(".FAILED.onnx"):
                found.add(f"{pkg}/{rel.as_posix()}")
    return found


def test_wheel_holds_the_runtime_and_nothing_else(wheel):
    from emo.edge_runtime import __version__

    names = set(zipfile.ZipFile(wheel).namelist())
    info = f"emo_fer-{__version__}.dist-info"
    assert wheel.name == f"emo_fer-{__version__}-py3-none-any.whl"
    assert {n.split("/")[0] for n in names} == {"emo", info}, "only the emo package and its metadata"
    # every module and data file of the packages (a new subpackage not listed in pyproject.toml shows here)
    assert not _package_files() - names, f"missing from the wheel: {sorted(_package_files() - names)}"
    bundled = {f"emo/edge_runtime/models/emo_{m}.int8.onnx" for m in ("tiny", "default", "large")}
    assert bundled <= names and "emo/edge_runtime/serve/web/index.html" in names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".ckpt")) or "conftest" in n or "/tests/" in n]
    meta = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert f"Name: {DIST}\n" in meta and "License-Expression: Apache-2.0\n" in meta
    assert f"{info}/licenses/LICENSE" in names
    base = [l for l in meta.splitlines() if l.startswith("Requires-Dist:") and "extra ==" not in l]
    assert base and not [l for l in base if any(k in l for k in ("torch", "onnx ", "onnx>", "onnx=", "matplotlib"))]
    # Ray (analyze --ray) is an extra: the edge install has none of it
    assert "Provides-Extra: ray\n" in meta and not [l for l in base if l.split(":", 1)[1].strip().lower().startswith("ray")]


def test_wheel_installs_into_a_clean_venv_and_infers(wheel, tmp_path):
    deadline = time.monotonic() + INSTALL_TIMEOUT
    left = lambda: max(10.0, deadline - time.monotonic())  # noqa: E731
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_NO_INPUT"] = "1"
    venv = tmp_path / "venv"
    try:
        r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=left(), env=env)
        if r.returncode:
            pytest.skip(f"python -m venv failed (no ensurepip?): {_tail(r.stdout + r.stderr, 1)}")
        py, edge = venv / "bin" / "python", venv / "bin" / "emo-edge"
        try:
            r = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "--timeout", "30",
                                "--retries", "2", "-c", str(REPO / "constraints.txt"), str(wheel)],
                               capture_output=True, text=True, timeout=left(), env=env)
        except subprocess.TimeoutExpired:
            pytest.skip(f"pip install of the wheel did not finish in {INSTALL_TIMEOUT:.0f} s (a slow or unreachable package index)")
        out = r.stdout + r.stderr
        seen = [m for m in NO_INDEX if m in out]
        if r.returncode and seen:
            pytest.skip(f"pip could not get the base dependencies from a package index ({seen[0]}): {_tail(out, 1)}")
        assert r.returncode == 0, f"pip install {wheel.name} failed:\n{_tail(out)}"

        probe = ("import json, importlib.metadata as m, importlib.util as u, emo.edge_runtime as e; "
                 f"print(json.dumps([m.version('{DIST}'), e.__version__, e.__file__, "
                 "u.find_spec('torch') is None, u.find_spec('onnx') is None]))")
        r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=left(),
                           env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        dist_version, version, where, no_torch, no_onnx = json.loads(r.stdout)
        assert dist_version == version and Path(where).resolve().is_relative_to(venv.resolve()), "the venv's own copy, not the checkout"
        assert no_torch and no_onnx, "the base install pulled in torch or onnx"

        r = subprocess.run([str(edge), "infer", str(REPO / "examples" / "astronaut.png"), "--format", "json"],
                           capture_output=True, text=True, timeout=left(), env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        recs = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
        assert len(recs) == 1 and [f["emotion"] for f in recs[0]["faces"]] == ["happy"]
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # a few hundred MB; pytest keeps its last three tmp dirs
