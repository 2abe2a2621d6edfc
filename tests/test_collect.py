"""emo-edge collect: face crops of real photos and videos of real faces, sorted by emotion, with
faces.csv; limits (--every, --max-faces), blurred and near-duplicate faces skipped, resume, errors."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from emo.edge_runtime.collect import CollectOptions, collect, name_stem, sharpness
from emo.edge_runtime.collect_table import COLUMNS, CSV_NAME, FacesTable
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.labels import LABELS
from emo.edge_runtime.testmedia import make_test_video

from conftest import REPO, YUNET, bin_path, make_video, run_cli

ASTRONAUT = REPO / "examples" / "astronaut.png"


@pytest.fixture(scope="module")
def drift(tmp_path_factory) -> Path:
    """40 frames (10 fps) of the astronaut's real face, 80 pixels high, drifting across a 320x240 frame."""
    return make_test_video(ASTRONAUT, tmp_path_factory.mktemp("drift") / "drift.avi", frames=40, size=(320, 240),
                           fps=10.0, face_px=80)


@pytest.fixture(scope="module")
def still(tmp_path_factory) -> Path:
    """A video of a still photo: 20 identical frames of the astronaut."""
    img = cv2.imread(str(ASTRONAUT))
    frame = np.full((480, 640, 3), 90, np.uint8)
    small = cv2.resize(img, (400, 400), interpolation=cv2.INTER_AREA)
    frame[40:440, 120:520] = small
    return make_video(tmp_path_factory.mktemp("still") / "still.avi", [frame] * 20)


def rows_of(out: Path) -> list[dict]:
    with open(out / CSV_NAME, newline="") as fh:
        return list(csv.DictReader(fh))


def run(source, out, **kw) -> int:
    return collect(CollectOptions(source=str(source), out=Path(out), detector="haar", **kw))


def check_folder(out: Path, size: int = 96) -> list[dict]:
    """Every row names a crop in its emotion's folder (the top score), of the right size, and every crop has its row."""
    rows = rows_of(out)
    with open(out / CSV_NAME, newline="") as fh:
        assert next(csv.reader(fh)) == list(COLUMNS)
    for r in rows:
        img = cv2.imread(str(out / r["file"]), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.shape == (size, size) and img.dtype == np.uint8, r["file"]
        scores = {k: float(r[k]) for k in LABELS}
        assert r["file"].split("/")[0] == r["emotion"] == max(scores, key=scores.get)
        assert abs(sum(scores.values()) - 100) < 0.1
        name = Path(r["file"]).name
        assert name.split("_", 1)[0] == r["group"] == f"{r['group'].rsplit('-t', 1)[0]}-t{r['track']}"
        assert float(r["sharpness"]) > 0 and int(r["w"]) > 0
    on_disk = sorted(str(p.relative_to(out)) for p in out.glob("*/*") if p.is_file())
    assert on_disk == sorted(r["file"] for r in rows)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(LABELS)
    return rows


def test_photo_crop_lands_in_its_emotion_folder(tmp_path, capsys):
    assert run(ASTRONAUT, tmp_path / "a") == 0
    rows = check_folder(tmp_path / "a")
    assert len(rows) == 1 and rows[0]["file"] == "happy/astronaut-t1_f000000.png"
    assert rows[0]["source"] == str(ASTRONAUT) and rows[0]["image"] == "astronaut.png"
    assert "saved 1 faces into" in capsys.readouterr().err
    assert run(ASTRONAUT, tmp_path / "b", size=64, margin=0.2) == 0
    r = check_folder(tmp_path / "b", size=64)[0]
    a = cv2.imread(str(tmp_path / "a" / rows[0]["file"]), cv2.IMREAD_GRAYSCALE)
    b = cv2.imread(str(tmp_path / "b" / r["file"]), cv2.IMREAD_GRAYSCALE)
    assert a.mean() != b.mean()  # the margin frames more of the photo


def test_still_video_gives_one_crop_per_track(still, tmp_path, capsys):
    assert run(still, tmp_path / "o", every=1) == 0
    rows = check_folder(tmp_path / "o")
    assert len(rows) == 1 and rows[0]["group"] == "still-t1" and rows[0]["frame"] == "0"
    assert "skipped 0 blurred, 19 duplicate" in capsys.readouterr().err


def test_every_and_max_faces(drift, tmp_path):
    assert run(drift, tmp_path / "e", every=7, min_change=0) == 0
    rows = check_folder(tmp_path / "e")
    for track in {r["track"] for r in rows}:
        frames = [int(r["frame"]) for r in rows if r["track"] == track]
        assert all(b - a >= 7 for a, b in zip(frames, frames[1:])), frames
    assert sum(r["track"] == "1" for r in rows) >= 4  # the astronaut, every 7 of 40 frames (Haar may add a false face)
    assert all(float(r["time"]) == int(r["frame"]) / 10 for r in rows)
    assert run(drift, tmp_path / "m", every=1, min_change=0, max_faces=3) == 0
    assert len(check_folder(tmp_path / "m")) == 3
    assert run(drift, tmp_path / "m", every=1, min_change=0, max_faces=3) == 0  # the cap counts faces saved before
    assert len(rows_of(tmp_path / "m")) == 3


def test_blurred_faces_are_skipped(tmp_path, capsys):
    img = cv2.imread(str(ASTRONAUT))
    blurred = cv2.GaussianBlur(img, (0, 0), 3.0)  # 3% of the face's height
    cv2.imwrite(str(tmp_path / "blurred.png"), blurred)
    assert run(tmp_path / "blurred.png", tmp_path / "o") == 0
    assert rows_of(tmp_path / "o") == []
    assert "skipped 1 blurred" in capsys.readouterr().err
    assert run(tmp_path / "blurred.png", tmp_path / "o", min_sharpness=10) == 0
    assert len(check_folder(tmp_path / "o")) == 1
    sharp = cv2.resize(cv2.imread(str(ASTRONAUT), cv2.IMREAD_GRAYSCALE)[64:163, 174:273], (96, 96))
    assert sharpness(sharp) > 3 * CollectOptions.min_sharpness > 2 * sharpness(cv2.GaussianBlur(sharp, (0, 0), 3.0))


def test_rerun_resumes_without_duplicates(drift, tmp_path, capsys):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run(drift, whole, every=5, min_change=0) == 0
    assert run(drift, parts, every=5, min_change=0, max_frames=17) == 0
    first = rows_of(parts)
    assert 0 < len(first) < len(rows_of(whole))
    capsys.readouterr()
    assert run(drift, parts, every=5, min_change=0) == 0
    assert f"{len(first)} saved before" in capsys.readouterr().err
    assert run(drift, parts, every=5, min_change=0) == 0
    assert rows_of(parts)[: len(first)] == first  # appended, never rewritten
    assert rows_of(parts) == rows_of(whole)
    check_folder(parts)


def test_a_torn_last_row_is_dropped_and_its_face_made_again(drift, tmp_path, capsys):
    out = tmp_path / "o"
    assert run(drift, out, every=10, min_change=0) == 0
    done = (out / CSV_NAME).read_text()
    lines = done.splitlines(keepends=True)
    (out / CSV_NAME).write_text("".join(lines[:-1]) + lines[-1][:25])  # a crash in the middle of the last append
    assert run(drift, out, every=10, min_change=0) == 0
    assert "dropped a torn last row" in capsys.readouterr().err
    assert (out / CSV_NAME).read_text() == done


def test_photo_folder_one_group_per_photo_and_names_kept_apart(tmp_path):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        os.symlink(ASTRONAUT, tmp_path / d / "my_photo.png")
    out = tmp_path / "o"
    assert run(tmp_path / "x", out) == 0 and run(tmp_path / "y", out) == 0 and run(tmp_path / "x", out) == 0
    rows = check_folder(out)
    assert len(rows) == 2 and rows[0]["group"] == "my-photo-t1"
    assert rows[1]["group"].startswith("my-photo-") and rows[1]["group"] != rows[0]["group"]  # another source, another group
    assert name_stem("a_b c/é") == "a-b-c" and "_" not in name_stem("___")


def test_groups_are_what_finetune_splits_by(drift, still, tmp_path):
    data = pytest.importorskip("emo.train.data")
    out = tmp_path / "o"
    assert run(drift, out, every=5, min_change=0) == 0 and run(still, out) == 0
    rows = rows_of(out)
    assert data.face_groups([r["file"] for r in rows]) == [r["group"] for r in rows]
    assert data.face_groups([r["file"] for r in rows], str(out / CSV_NAME)) == [r["group"] for r in rows]  # --groups DIR/faces.csv


@pytest.mark.skipif(YUNET is None or not YUNET.is_file(), reason="YuNet model not found (EMO_SHARED_DATA)")
def test_yunet_turns_a_tilted_face_upright(tmp_path):
    img = cv2.imread(str(ASTRONAUT))
    h, w = img.shape[:2]
    tilted = cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), 20, 1.0), (w, h), borderMode=cv2.BORDER_REPLICATE)
    cv2.imwrite(str(tmp_path / "tilted.png"), tilted)
    crops = []
    for align in (True, False):
        out = tmp_path / str(align)
        assert collect(CollectOptions(source=str(tmp_path / "tilted.png"), out=out, detector="yunet",
                                      detector_model=YUNET, align=align)) == 0
        crops.append(cv2.imread(str(out / rows_of(out)[0]["file"]), cv2.IMREAD_GRAYSCALE).astype(np.float32))
    upright = cv2.flip(crops[0], 1)  # an upright face is about as symmetric as the photo
    assert np.abs(crops[0] - upright).mean() < np.abs(crops[1] - cv2.flip(crops[1], 1)).mean()


def test_a_live_stream_is_a_new_session_each_run(still, tmp_path):
    from emo.edge_runtime.testmedia import MjpegTestStream

    stream = MjpegTestStream.of_video(still, fps=20.0)
    out = tmp_path / "o"
    try:
        for _ in range(2):
            assert run(stream.url, out, every=1, max_frames=8) == 0
    finally:
        stream.close()
    rows = check_folder(out)
    assert len(rows) == 2 and rows[0]["group"] != rows[1]["group"]  # one crop per run (the rest duplicates), never resumed
    assert all(r["group"].startswith("live-") and r["source"] == stream.url for r in rows)


def one_line_error(r) -> str:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr


def test_errors_are_one_line(tmp_path):
    assert "not found" in one_line_error(run_cli("emo-edge", "collect", tmp_path / "nope.mp4", "--out", tmp_path / "o"))
    assert not (tmp_path / "o").exists()
    (tmp_path / "file").write_text("x")
    assert "is a file" in one_line_error(run_cli("emo-edge", "collect", ASTRONAUT, "--out", tmp_path / "file"))
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / CSV_NAME).write_text("name,label\na.png,happy\n")
    assert "not a table of emo-edge collect's" in one_line_error(run_cli("emo-edge", "collect", ASTRONAUT, "--out", theirs))
    assert (theirs / CSV_NAME).read_text() == "name,label\na.png,happy\n" and os.listdir(theirs) == [CSV_NAME]
    assert "--out" in one_line_error(run_cli("emo-edge", "collect", ASTRONAUT, "--out", "/proc/emo-collect"))
    mine = tmp_path / "mine"
    mine.mkdir()
    held = FacesTable(mine)
    try:
        assert "another emo-edge collect" in one_line_error(run_cli("emo-edge", "collect", ASTRONAUT, "--out", mine))
    finally:
        held.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder")
def test_out_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert "not writable" in one_line_error(run_cli("emo-edge", "collect", ASTRONAUT, "--out", ro))
    finally:
        ro.chmod(0o700)


def test_ctrl_c_keeps_what_was_saved(tmp_path):
    video = make_test_video(ASTRONAUT, tmp_path / "long.avi", frames=300, fps=10.0)
    out = tmp_path / "o"
    p = subprocess.Popen([bin_path("emo-edge"), "collect", str(video), "--out", str(out), "--every", "1",
                          "--min-change", "0", "--detector", "haar"], stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while len(rows_of(out) if (out / CSV_NAME).exists() else []) < 3 and time.monotonic() - t0 < 60:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "stopped by SIGINT" in err and "Traceback" not in err, err
    rows = check_folder(out)
    assert 3 <= len(rows) < 300
    assert not list(out.glob("*/.emo-tmp-*"))


def test_cli_defaults_are_the_options_defaults():
    import typer.main

    from emo.edge_runtime.cli import app

    cmd = typer.main.get_command(app).commands["collect"]
    for p in cmd.params:
        if p.name not in ("source", "out") and hasattr(CollectOptions, p.name):
            assert p.default == getattr(CollectOptions, p.name), p.name


def test_collect_never_imports_torch(tmp_path):
    r = subprocess.run([sys.executable, "-c", "import sys; from emo.edge_runtime.collect import collect; "
                        "assert 'torch' not in sys.modules"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_not_ours_is_refused_in_process(tmp_path):
    (tmp_path / CSV_NAME).write_text(",".join(COLUMNS) + "\nbad,row\n")
    with pytest.raises(EmoError, match="line 2"):
        FacesTable(tmp_path)
