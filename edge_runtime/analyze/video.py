"""One video of `emo-edge analyze`: per-frame table, per-track summaries and a timeline plot.

:func:`analyze_video` is the whole job for one video (the Python API): it runs the one frame loop
(:func:`emo.edge_runtime.pipeline.run`) with three sinks, a CSV writer that streams rows to disk,
per-track running sums, and a progress counter, then writes ``tracks.csv``, ``timeline.png`` and
``summary.json`` from what those sinks kept. Memory does not grow with the video's length.
A video whose outputs are complete and were made with the same parameters is skipped (resume).
:mod:`.batch` maps it over many videos (`emo-edge analyze`).

Every output is written under a temporary name and renamed when complete; ``summary.json`` is
written last and is the mark of a finished video (it is removed first when a video is redone).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from .. import __version__
from ..errors import EmoError
from ..files import atomic_output, atomic_write_bytes, atomic_write_text, check_file, check_writable_dir, shown
from ..labels import LABELS
from ..ledger import TrackLedger
from ..job import RecognizerOptions, run_loop
from ..stopping import StopFlag
from .tracks import TRACK_RULE, consolidate


def frame_columns(labels: Sequence[str] = LABELS) -> tuple[str, ...]:
    return ("timestamp", "frame", "track", "box_x", "box_y", "box_w", "box_h", *labels, "emotion")


def track_columns(labels: Sequence[str] = LABELS) -> tuple[str, ...]:
    return ("track", "first_seen", "last_seen", "seconds", "frames", "merged_from",
            *(f"mean_{e}" for e in labels), *(f"peak_{e}" for e in labels), "dominant")


FRAME_COLUMNS, TRACK_COLUMNS = frame_columns(), track_columns()  # with the model's labels (FER2013 order)
OUTPUTS = ("frames.csv", "tracks.csv", "timeline.png")
SUMMARY = "summary.json"


@dataclass
class AnalyzeOptions(RecognizerOptions):
    """What shapes an analysis (see ``emo-edge analyze --help``). ``threads`` and ``spin`` only
    change the speed, so a rerun with other values still counts as the same analysis."""

    stride: int = 1
    min_track_seconds: float = 0.5
    merge_gap: float = 1.0
    timeline_tracks: int = 4
    parquet: bool = False

    def check(self) -> None:
        """Raise EmoError for values no analysis can use (the CLI's own checks cover most)."""
        if self.stride < 1 or self.detect_every < 1 or self.timeline_tracks < 1:
            raise EmoError("--stride, --detect-every and --timeline-tracks must be at least 1")
        if self.min_track_seconds < 0 or self.merge_gap < 0:
            raise EmoError("--min-track-seconds and --merge-gap must be 0 or more")
        if self.parquet:
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise EmoError('--parquet needs pyarrow, which is not installed: pip install "emo-fer[parquet]" '
                               "(or leave --parquet off: frames.csv holds the same table)") from None

    def check_model(self) -> None:
        """Load the model and the face detector once, so that a bad ``--model`` or ``--detector-model``
        (missing, not ONNX, without emo metadata, an unknown name) is refused before any work."""
        self.recognizer()

    def parameters(self) -> dict:
        """The options that decide the outputs, with the model files by content and the detector
        that ``auto`` stands for here: the resume key."""
        from ..classifier import resolve_model
        from ..faces import make_detector

        model = resolve_model(self.model)
        p = {k: v for k, v in asdict(self).items() if k not in ("threads", "spin", "model", "detector_model")}
        p["detector_used"] = make_detector(self.detector, self.detector_model, self.detect_size).name
        p["track_rule"] = TRACK_RULE  # a new rule makes new outputs: an analysis made with another is redone
        p["model_sha256"] = _sha256(check_file(model, "model"))
        p["detector_model_sha256"] = _sha256(check_file(self.detector_model, "detector model")) if self.detector_model else None
        return p


@dataclass
class VideoResult:
    """What happened to one video: ``status`` is done, skipped (complete already), failed or stopped."""

    video: str
    out: str
    status: str
    message: str = ""
    frames: int = 0  # frames processed (every stride-th)
    rows: int = 0
    tracks: int = 0
    seconds: float = 0.0  # wall time
    video_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in ("done", "skipped")

    @property
    def realtime(self) -> float:
        return self.video_seconds / self.seconds if self.seconds > 0 else 0.0


# --- sinks of the frame loop ---------------------------------------------------------------------

class CsvRows:
    """Streams one row per face per frame to an open CSV file (track ids as the tracker gave them).

    Unlike the sinks of a live source, it writes in the loop (through the file's buffer) and drops
    nothing: an analysis must hold every row, and a video file waits for the loop, not the reverse."""

    def __init__(self, fh, labels: Sequence[str]):
        self.fh, self.labels, self.rows = fh, labels, 0
        self.writer = csv.writer(fh, lineterminator="\n")
        self.writer.writerow(frame_columns(labels))

    def write(self, result) -> None:
        ts = f"{result.frame.timestamp:.4f}"
        for f in result.faces:
            self.writer.writerow([ts, result.frame.index, f.track, *f.box, *(f"{f.scores[e]:.2f}" for e in self.labels), f.emotion])
            self.rows += 1

    def close(self) -> None:
        self.fh.flush()


class ProgressSink:
    """Calls ``report(frames_read, frames_total)`` at most ``hz`` times a second, and at the end."""

    def __init__(self, report: Callable[[int, int], None], total: int, hz: float = 5.0):
        self.report, self.total, self.period = report, total, 1.0 / hz
        self._next, self.done = 0.0, 0

    def write(self, result) -> None:
        self.done = result.frame.index + 1
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.period
            self.report(self.done, self.total)

    def close(self) -> None:
        self.report(self.done, self.total)


# --- one video -----------------------------------------------------------------------------------

def analyze_video(video, out_dir, options: Optional[AnalyzeOptions] = None, force: bool = False,
                  stop: Optional[StopFlag] = None, progress: Optional[Callable[[int, int], None]] = None,
                  parameters: Optional[dict] = None) -> VideoResult:
    """Analyse one video file, or the http(s) URL of one, into ``out_dir`` (frames.csv, tracks.csv,
    timeline.png, summary.json).

    Returns a :class:`VideoResult` (``status`` done, skipped or stopped); raises EmoError when
    the video cannot be read or the outputs cannot be written. ``progress(read, total)`` is
    called a few times a second; ``stop`` (a StopFlag) ends the run early, leaving no new
    outputs. ``parameters`` is ``options.parameters()``, when the caller already has it."""
    o = options or AnalyzeOptions()
    o.check()
    path = video_input(video)
    out = Path(out_dir)
    params = parameters or o.parameters()
    ident = identity(path)
    if not force and is_complete(out, params, ident):
        return VideoResult(shown(path), shown(out), "skipped", "complete, same parameters")
    claim(out, ident, force)
    result = None
    try:
        result = _analyze(path, out, o, params, ident, stop or StopFlag(), progress)
        return result
    finally:
        if result is None or result.status != "done":
            try:
                out.rmdir()  # only when empty: nothing of a failed or stopped first attempt is left behind
            except OSError:
                pass


def _analyze(path, out: Path, o: AnalyzeOptions, params: dict, ident: dict, stop: StopFlag, progress) -> VideoResult:
    from ..sources import VideoSource

    t0, label = time.monotonic(), shown(path)
    src = VideoSource(path, label, False, stop=stop, stride=o.stride)
    try:
        check_recording(src, label)
        total = int(src.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        rec = o.recognizer()
    except BaseException:
        src.close()
        raise
    raw = raw_path(out)  # rows as the tracker numbered them; frames.csv is made from it
    try:
        with ExitStack() as files:
            rows, sums = None, TrackLedger(rec.labels)

            def add_sinks(sinks: list) -> None:
                nonlocal rows
                rows = CsvRows(files.enter_context(open(raw, "w", newline="", encoding="utf-8")), rec.labels)
                sinks += [rows, sums] + ([ProgressSink(progress, total)] if progress else [])

            summary = run_loop(src, label, rec, add_sinks, stop)
        if summary.stopped_by:
            return VideoResult(label, shown(out), "stopped", f"stopped by {summary.stopped_by}", summary.frames)
        facts = VideoFacts(ident, src.fps, list(src.size) if src.size else None, total)
        return write_outputs(out, raw, sums, Counts(summary.frames, rows.rows), rec, o, params, facts, label, t0)
    finally:
        try:
            os.unlink(raw)
        except OSError:
            pass


def check_recording(src, label: str) -> None:
    """Refuse what analyze cannot time: a live stream, a video without a frame rate."""
    if src.live:
        raise EmoError(f"{label} is a live stream, not a recording: analyze takes video files and URLs of video "
                       "files (emo-edge infer and serve read live streams)")
    if not src.fps:
        raise EmoError(f"{label} does not say its frame rate, so its frames cannot be given timestamps; re-mux it "
                       "(ffmpeg -i IN -c copy OUT.mp4)")


def raw_path(out: Path) -> Path:
    """Where the rows go as they come, before frames.csv is made from them (a run killed leaves
    it; the next run of the same folder removes it, see :func:`claim`)."""
    return out / f".emo-raw-{os.getpid()}.csv"


@dataclass
class VideoFacts:
    """What summary.json says of the video itself."""

    ident: dict  # see identity()
    fps: float
    size: Optional[list]  # [width, height]
    frames_reported: int  # by the container (0: unknown)


@dataclass
class Counts:
    frames: int  # processed
    rows: int


def write_outputs(out: Path, raw: Path, sums: TrackLedger, counts: Counts, rec, o: AnalyzeOptions, params: dict,
                  facts: VideoFacts, label: str, t0: float, timing: Optional[dict] = None) -> VideoResult:
    """Everything after the frame loop: from the streamed rows (``raw``, the header and rows of
    :class:`CsvRows`, track ids as the tracker gave them) and the track sums, write frames.csv,
    tracks.csv, timeline.png (and frames.parquet), then summary.json, the mark of a finished
    video. The local runner and the Ray runner (which puts its chunks' rows together first) both
    end here. ``timing`` adds to summary.json's timing (how a runner ran)."""
    step = o.stride / facts.fps  # the seconds one processed frame stands for
    in_video = max(facts.frames_reported, sums.last_index + 1)
    duration = in_video / facts.fps  # the whole video, not only up to the last frame processed
    kept, merged, dropped = consolidate(list(sums.tracks.values()), step, o.min_track_seconds, o.merge_gap)
    in_timeline = sorted(sorted(kept, key=lambda s: -s.frames)[: o.timeline_tracks], key=lambda s: s.first)
    binner = _final_frames(raw, out / "frames.csv", merged, in_timeline, duration, step, len(rec.labels))
    _write_tracks(out / "tracks.csv", kept, step, rec.labels)
    _write_timeline(out / "timeline.png", in_timeline, binner, step, rec.labels, duration, label, len(kept))
    if o.parquet:
        _write_parquet(out / "frames.csv", out / "frames.parquet", rec.labels)
    seconds = time.monotonic() - t0
    result = VideoResult(label, shown(out), "done", "", counts.frames, counts.rows, len(kept), seconds, duration)
    if merged or dropped:
        result.message = f"{len(merged)} track(s) merged into others, {len(dropped)} short track(s) dropped (see {SUMMARY})"
    doc = {
        "emo": __version__,
        "video": {**facts.ident, "fps": facts.fps, "size": facts.size, "frames_reported": facts.frames_reported},
        "parameters": params,
        "model": {"path": shown(rec.classifier.path), "arch": rec.classifier.meta.arch, "precision": rec.classifier.meta.precision},
        "detector": {"name": rec.face_detector.name, "asked": o.detector, "model": shown(o.detector_model) if o.detector_model else None,
                     "detect_every": o.detect_every, "detect_size": rec.face_detector.max_side or o.detect_size, "align": o.align},
        "frames": {"in_video": in_video, "processed": counts.frames, "with_faces": sums.with_faces, "rows": counts.rows},
        "tracks": {"rule": TRACK_RULE, "raw": len(sums.tracks), "kept": len(kept), "in_timeline": [s.id for s in in_timeline],
                   "merged": {str(k): v for k, v in sorted(merged.items())},
                   "dropped": [{"track": s.id, "frames": s.frames, "seconds": round(s.seconds(step), 3)} for s in dropped]},
        "timing": {"seconds": round(seconds, 3), "video_seconds": round(duration, 3), "realtime_factor": round(result.realtime, 2),
                   "frames_per_second": round(counts.frames / seconds, 2) if seconds else 0.0, "threads": o.threads,
                   "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(timing or {})},
        "outputs": {n: os.stat(out / n).st_size for n in (*OUTPUTS, *(("frames.parquet",) if o.parquet else ()))},
    }
    atomic_write_text(out / SUMMARY, json.dumps(doc, indent=2))  # last: the mark of a complete analysis
    return result


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_url(video) -> bool:
    """An http(s) URL: a recording on a web server or in object storage, which every node of a
    cluster reads as well as a shared path."""
    return isinstance(video, str) and re.match(r"(?i)^https?://", video) is not None


def video_input(video):
    """A video to analyse: an http(s) URL as it is, else a file that must exist (a Path)."""
    return video if is_url(video) else check_file(video, "video")


def video_name(video) -> str:
    """The file name of a video (for a URL, the last part of its path)."""
    if is_url(video):
        from urllib.parse import unquote, urlsplit

        u = urlsplit(video)
        return Path(unquote(u.path)).name or u.hostname or "video"
    return Path(video).name


def identity(video) -> dict:
    """What a rerun compares to tell the same video: its path (or URL), size and time."""
    if is_url(video):
        size, mtime_ns = url_facts(video)
        return {"path": video, "name": video_name(video), "bytes": size, "mtime_ns": mtime_ns}
    st = os.stat(video)
    return {"path": shown(os.path.abspath(video)), "name": shown(video.name), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def url_facts(url: str, timeout: float = 10.0) -> tuple[Optional[int], Optional[int]]:
    """(size, modification time in ns) of the file at ``url``, as its server says (None where it
    does not), from a HEAD request; a server that refuses HEAD (a presigned URL) is asked for the
    first byte. Raises EmoError when the URL cannot be read."""
    import email.utils
    import urllib.error
    import urllib.request

    def ask(method: str, headers: dict):
        with urllib.request.urlopen(urllib.request.Request(url, method=method, headers=headers), timeout=timeout) as r:
            return r.headers

    try:
        try:
            h = ask("HEAD", {})
            size = h.get("Content-Length")
        except urllib.error.HTTPError as e:
            if e.code not in (403, 405, 501):
                raise
            h = ask("GET", {"Range": "bytes=0-0"})
            size = (h.get("Content-Range") or "").rpartition("/")[2]
    except urllib.error.HTTPError as e:
        raise EmoError(f"{url} cannot be read: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise EmoError(f"{url} cannot be read ({getattr(e, 'reason', e)}); check the URL and that its server is up") from None
    mtime = None
    try:
        mtime = int(email.utils.parsedate_to_datetime(h.get("Last-Modified")).timestamp()) * 10**9
    except (TypeError, ValueError):
        pass
    return (int(size) if size and size.isdigit() else None), mtime


def _read_summary(out: Path) -> Optional[dict]:
    try:
        with open(out / SUMMARY, encoding="utf-8") as fh:
            doc = json.load(fh)
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


def is_complete(out: Path, params: dict, ident: dict) -> bool:
    """Whether ``out`` holds a finished analysis of this very file with these parameters."""
    doc = _read_summary(out)
    if doc is None or doc.get("parameters") != params or doc.get("video", {}).get("path") != ident["path"]:
        return False
    if any(doc["video"].get(k) != ident[k] for k in ("bytes", "mtime_ns")):
        return False
    try:
        return all(os.stat(out / n).st_size == size for n, size in doc.get("outputs", {}).items()) and bool(doc.get("outputs"))
    except OSError:
        return False


def claim(out: Path, ident: dict, force: bool) -> None:
    """Make ``out`` ready for a new analysis: refuse to replace another video's analysis unless
    forced; remove the old summary first, so a half-redone folder never looks complete."""
    check_writable_dir(out, "--out")
    doc = _read_summary(out)
    if doc is not None and not force and doc.get("video", {}).get("path") not in (None, ident["path"]):
        raise EmoError(f"{shown(out)} holds the analysis of another video ({doc['video']['path']}); use another --out, "
                       "or --force to replace it")
    try:
        os.unlink(out / SUMMARY)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise EmoError(f"cannot replace {shown(out / SUMMARY)}: {e.strerror}") from None
    for p in out.glob(".emo-*-*"):  # left by a run that was killed (-9, power cut): its process is gone
        m = re.match(r"\.emo-(?:raw|tmp)-(\d+)", p.name)
        if m and not _alive(int(m.group(1))):
            p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _final_frames(raw: Path, dest: Path, merged: dict, shown_tracks: list, duration: float, step: float, n_labels: int):
    """Copy the streamed rows into frames.csv with merged tracks renumbered, binning the
    timeline's curves on the way (one pass, constant memory)."""
    from .timeline import Binner

    binner = Binner([s.id for s in shown_tracks], duration, n_labels, step)
    score_cols = slice(7, 7 + n_labels)
    with atomic_output(dest) as tmp:
        with open(raw, newline="", encoding="utf-8") as src, open(tmp, "w", newline="", encoding="utf-8") as dst:
            reader, writer = csv.reader(src), csv.writer(dst, lineterminator="\n")
            writer.writerow(next(reader))
            for row in reader:
                track = merged.get(int(row[2]), int(row[2]))
                row[2] = str(track)
                writer.writerow(row)
                binner.add(track, float(row[0]), [float(v) for v in row[score_cols]])
            dst.flush()
            os.fsync(dst.fileno())
    return binner


def _write_tracks(dest: Path, kept: list, step: float, labels: Sequence[str]) -> None:
    with atomic_output(dest) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(track_columns(labels))
            for s in sorted(kept, key=lambda s: (s.first, s.id)):
                w.writerow([s.id, f"{s.first:.4f}", f"{s.last:.4f}", f"{s.seconds(step):.4f}", s.frames,
                            " ".join(map(str, sorted(s.merged_from))), *(f"{v:.2f}" for v in s.means),
                            *(f"{v:.2f}" for v in s.peaks), labels[int(np.argmax(s.means))]])
            fh.flush()
            os.fsync(fh.fileno())


def _write_timeline(dest: Path, shown_tracks: list, binner, step: float, labels: Sequence[str], duration: float,
                    label: str, kept: int) -> None:
    from .timeline import Panel, render

    panels = [Panel(f"track {s.id}: {s.seconds(step):.1f} s on screen ({s.first:.1f}-{s.last:.1f} s), mostly "
                    f"{labels[int(np.argmax(s.means))]} ({s.means.max():.0f}% on average)", binner.means(s.id), binner.join)
              for s in shown_tracks]
    more = f", the {len(shown_tracks)} longest shown" if kept > len(shown_tracks) else ""
    img = render(panels, labels, duration, f"{Path(label).name}: emotion scores over time, {kept} track(s){more}")
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise EmoError(f"cannot encode {shown(dest)}")
    atomic_write_bytes(dest, buf.tobytes())


def _write_parquet(csv_path: Path, dest: Path, labels: Sequence[str]) -> None:
    """frames.csv as Parquet, converted in blocks (pyarrow's streaming CSV reader), with the
    column types stated, so that no block (or an empty table) guesses them differently."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    types = {c: pa.int64() for c in ("frame", "track", "box_x", "box_y", "box_w", "box_h")}
    types.update({c: pa.float64() for c in ("timestamp", *labels)}, emotion=pa.string())
    with atomic_output(dest) as tmp:
        reader = pacsv.open_csv(str(csv_path), convert_options=pacsv.ConvertOptions(column_types=types))
        with pq.ParquetWriter(str(tmp), reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
