"""One vocabulary across emo-edge, emo-train and emo-export: --version, -v/-q, -o, old names as aliases."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from emo.edge_runtime import __version__

PROGS = {"emo-edge": "emo.edge_runtime.cli", "emo-train": "emo.train.cli", "emo-export": "emo.export.cli"}


def run(prog: str, *args: str) -> subprocess.CompletedProcess:
    code = f"import sys; sys.argv[0] = {prog!r}; from {PROGS[prog]} import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("prog", sorted(PROGS))
def test_version(prog):
    if prog != "emo-edge":
        pytest.importorskip("torch")
    r = run(prog, "--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{prog} {__version__}"


def test_edge_verbose_quiet_set_the_emo_logger():
    from typer.testing import CliRunner

    from emo.edge_runtime.cli import app

    for flags, level in ((["-v"], logging.DEBUG), (["--quiet"], logging.WARNING), ([], logging.INFO)):
        r = CliRunner().invoke(app, [*flags, "models"])
        assert r.exit_code == 0, r.output
        assert logging.getLogger("emo").level == level


def test_verbose_and_quiet_together_is_one_line_error():
    r = run("emo-edge", "-v", "-q", "models")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_import_leaves_opencv_logging_alone():
    code = ("import os, cv2; before = cv2.utils.logging.getLogLevel(); import emo.edge_runtime, emo.edge_runtime.files; "
            "assert cv2.utils.logging.getLogLevel() == before; assert 'OPENCV_FFMPEG_LOGLEVEL' not in os.environ")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("OPENCV_")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_export_out_dir_short_option():
    pytest.importorskip("torch")
    from typer.main import get_command

    from emo.export.cli import app

    cmd = get_command(app)
    ctx = cmd.make_context("emo-export", ["model.pt", "-o", "out"], resilient_parsing=True)
    assert str(ctx.params["out_dir"]) == "out"
    ctx = cmd.make_context("emo-export", ["model.pt", "--out-dir", "out"], resilient_parsing=True)
    assert str(ctx.params["out_dir"]) == "out"
