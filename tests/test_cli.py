"""One vocabulary across emo-edge, emo-train and emo-export: --version, -v/-q, -o, old names as aliases."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

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


def test_edge_info_model_option_and_positional_alias_agree():
    new, old = run("emo-edge", "info", "--model", "tiny", "--json"), run("emo-edge", "info", "tiny", "--json")
    assert new.returncode == old.returncode == 0, new.stderr + old.stderr
    assert new.stdout == old.stdout and '"bytes"' in new.stdout
    both = run("emo-edge", "info", "tiny", "--model", "tiny")
    assert both.returncode == 2 and "once" in both.stderr


def test_model_name_that_is_neither_bundled_nor_a_file():
    r = run("emo-edge", "info", "--model", "huge")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "neither a bundled name (tiny, default, large) nor a file" in r.stderr
    r = run("emo-edge", "info", "--model", "huge.onnx")  # a file name: the missing file is named
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_train_evaluate_model_option_and_positional_alias_agree(tmp_path):
    pytest.importorskip("torch")
    ck, data = tmp_path / "missing.pt", tmp_path / "fer"
    new = run("emo-train", "evaluate", str(data), "--model", str(ck))
    old = run("emo-train", "evaluate", str(ck), str(data))
    assert new.returncode == old.returncode == 2 and "Traceback" not in new.stderr + old.stderr
    assert new.stderr == old.stderr and "missing.pt" in new.stderr
    assert run("emo-train", "evaluate", str(data)).returncode == 2  # no checkpoint: a one-line error


@pytest.mark.parametrize("prog,args,option,choices", [
    ("emo-edge", ["infer", "x.jpg", "--detector", "fog"], "--detector", ("auto", "haar", "yunet")),
    ("emo-edge", ["evaluate", "x", "--split", "fog"], "--split", ("train", "val", "test")),
    ("emo-train", ["evaluate", "x", "--split", "fog"], "--split", ("train", "val", "test")),
    ("emo-export", ["m.pt", "--calib-method", "fog"], "--calib-method", ("auto", "minmax", "entropy", "percentile")),
])
def test_bad_choice_lists_the_choices(prog, args, option, choices):
    if prog != "emo-edge":
        pytest.importorskip("torch")
    r = run(prog, *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    line, = r.stderr.strip().splitlines()
    assert option in line and all(f"'{c}'" in line for c in choices)


def test_recognizer_detect_size_and_its_deprecated_alias():
    from emo.edge_runtime import Recognizer

    assert Recognizer(model="tiny", detector="haar", detect_size=320).face_detector.max_side == 320
    with pytest.warns(DeprecationWarning, match="detect_size"):
        rec = Recognizer(model="tiny", detector="haar", detect_max_side=320)
    assert rec.detect_size == 320 and rec.face_detector.max_side == 320


def test_bench_subcommands_quick(tmp_path):
    photo = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"
    r = run("emo-edge", "bench", "model", "--model", "tiny", "--quick", "--runs", "5", "--json", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "m.json").read_text())["benchmark"] == "model_latency"
    assert (tmp_path / "m.md").is_file() and "| " in r.stdout
    r = run("emo-edge", "bench", "pipeline", "--model", "tiny", "--photo", str(photo), "--quick", "--json", str(tmp_path / "p.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "p.json").read_text())["rows"][0]["frames"] == 60
    r = run("emo-edge", "bench", "memory", "--photo", str(tmp_path / "none.png"), "--quick")
    assert r.returncode == 2 and "--photo" in r.stderr and "Traceback" not in r.stderr


def test_quiet_drops_the_info_lines(tmp_path):
    import cv2
    import numpy as np

    for emotion in ("happy", "sad"):
        (tmp_path / emotion).mkdir()
        cv2.imwrite(str(tmp_path / emotion / "a.png"), np.full((48, 48), 128, np.uint8))
    loud, quiet = run("emo-edge", "evaluate", str(tmp_path), "--model", "tiny"), run("emo-edge", "-q", "evaluate", str(tmp_path), "--model", "tiny")
    assert loud.returncode == quiet.returncode == 0, loud.stderr + quiet.stderr
    assert loud.stdout == quiet.stdout and "emo-edge: " in loud.stderr and "emo-edge: " not in quiet.stderr
