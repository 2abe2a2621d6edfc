"""The files of one analysed video: the rows as the loop streams them (:class:`CsvRows`), then,
after the loop, frames.csv, tracks.csv, timeline.png (and frames.parquet) and summary.json, the
mark of a finished video (:func:`write_outputs`). The local runner and the Ray runner both end here.

Every output is written under a temporary name and renamed when complete; ``summary.json`` is
written last."""
from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from .. import __version__
from ..errors import EmoError
from ..files import atomic_output, atomic_write_bytes, atomic_write_text, shown
from ..ledger import TrackLedger
from .options import OUTPUTS, SUMMARY, AnalyzeOptions, VideoResult, frame_columns, track_columns
from .tracks import TRACK_RULE, consolidate


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
