"""`emo-edge collect SOURCE --out DIR`: face crops for labelling, sorted by the model's guess.

The frame loop (:func:`emo.edge_runtime.pipeline.run`) feeds a :class:`CollectSink`, which cuts
each face the way the classifier does (:func:`~.preprocess.crop_face`: margin, square, upright by
the eye line where the detector sees the eyes) at ``--size`` pixels, and saves it as
``DIR/<emotion>/<stem>-t<track>_f<frame>.png``, one row per face in ``DIR/faces.csv``
(:mod:`.collect_table`). A face is skipped when it is blurred (``--min-sharpness``), when its
track saved a face fewer than ``--every`` frames ago, or when it looks like the last face saved of
its track (``--min-change``). ``<stem>-t<track>`` is the group `emo-train finetune` splits
validation by (the name before its first ``_``): one person's track in one source.
"""
from __future__ import annotations

import functools
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from .collect_table import CSV_NAME, FacesTable, row_key
from .errors import EmoError
from .files import atomic_write_bytes, check_writable_dir, exists, is_dir, shown
from .frames import Frame, Source
from .job import signals, stopped_status
from .labels import LABELS
from .pipeline import FrameResult
from .preprocess import InputSpec, crop_face, to_gray
from .recognizer import Face, Recognizer
from .runner import RecognizerOptions
from .stopping import StopFlag

log = logging.getLogger("emo")

SHARPNESS_SIZE = 48  # sharpness is measured on the crop at this size (the classifier's), whatever --size is
LOOK_SIZE, LOOK_MIDDLE = 32, 0.75  # near-duplicates are lined up at 32x32 and their middle 75% compared
MAX_FACES = "--max-faces"  # the stop reason once the cap is reached (a normal end)
PROGRESS_SECONDS = 2.0


@dataclass
class CollectOptions(RecognizerOptions):
    """What `emo-edge collect` takes (see ``emo-edge collect --help``)."""

    source: str = ""
    out: Path = Path("faces")
    size: int = 96
    margin: Optional[float] = None  # None: the model's own crop margin
    every: int = 10
    min_sharpness: float = 150.0
    min_change: float = 7.0
    max_faces: int = 0
    width: int = 0
    height: int = 0
    fps: float = 0.0
    reconnect: int = 10
    timeout: float = 10.0
    max_frames: int = 0
    duration: float = 0.0


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the crop at SHARPNESS_SIZE pixels: how much fine detail it holds."""
    small = cv2.resize(crop, (SHARPNESS_SIZE, SHARPNESS_SIZE), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(small, cv2.CV_64F).var())


def look_small(crop: np.ndarray) -> np.ndarray:
    """The crop at LOOK_SIZE pixels, as :func:`change` compares it."""
    return cv2.resize(crop, (LOOK_SIZE, LOOK_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)


def change(a: np.ndarray, b: np.ndarray) -> float:
    """How different two faces look: ``b`` is shifted onto ``a`` (phase correlation; a detector's box
    moves a few pixels from frame to frame on a face that stays still), then the mean absolute
    difference, in gray levels, of their middles (LOOK_MIDDLE of the side) at 16x16, each less its
    mean brightness (a camera's exposure is not a new look)."""
    dx, dy = cv2.phaseCorrelate(a.copy(), b.copy(), _window())[0]  # copies: OpenCV may window its inputs in place
    if max(abs(dx), abs(dy)) > LOOK_SIZE / 8:  # no sure match: compare as they are
        dx = dy = 0.0
    b = cv2.warpAffine(b, np.float32([[1, 0, -dx], [0, 1, -dy]]), (LOOK_SIZE, LOOK_SIZE), borderMode=cv2.BORDER_REPLICATE)
    o = int(LOOK_SIZE * (1 - LOOK_MIDDLE) / 2)
    x, y = (cv2.resize(m[o:LOOK_SIZE - o, o:LOOK_SIZE - o], (16, 16), interpolation=cv2.INTER_AREA) for m in (a, b))
    return float(np.abs((x - x.mean()) - (y - y.mean())).mean())


@functools.lru_cache(maxsize=1)
def _window() -> np.ndarray:
    return cv2.createHanningWindow((LOOK_SIZE, LOOK_SIZE), cv2.CV_32F)


def name_stem(text: str) -> str:
    """A file-name stem with no ``_`` (finetune's group separator) and nothing a file system minds."""
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-.")[:40] or "source"


def source_stem(label: str, live: bool, started: float) -> str:
    """The stem of a video file or stream: its name; of a camera or live stream: its name and the
    start time of this run (every session its own groups)."""
    m = re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*://", label)
    if m:
        from urllib.parse import urlsplit

        u = urlsplit(label)
        base = Path(u.path).stem or u.hostname or "stream"
    else:
        base = Path(label).stem or label
    stem = name_stem(base)
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}" if live else stem


@dataclass
class Counts:
    frames: int = 0
    faces: int = 0
    saved: int = 0
    already: int = 0  # saved by an earlier run (resume)
    blurred: int = 0
    duplicate: int = 0
    spaced: int = 0  # fewer than --every frames after its track's last saved face
    per_emotion: dict = field(default_factory=dict)

    def line(self) -> str:
        return (f"{self.frames} frames, {self.faces} faces seen, {self.saved} saved, skipped {self.blurred} blurred, "
                f"{self.duplicate} duplicate, {self.spaced} within --every, {self.already} saved before")


class CollectSink:
    """The loop's sink that saves the faces worth keeping (see the module docstring)."""

    def __init__(self, o: CollectOptions, table: FacesTable, rec: Recognizer, src: Source, stop: StopFlag):
        self.o, self.table, self.rec, self.src, self.stop = o, table, rec, src, stop
        margin = o.margin if o.margin is not None else rec.classifier.spec.margin
        self.spec = InputSpec(size=o.size, margin=margin)
        self.counts = Counts()
        self.last: dict[int, tuple[int, np.ndarray]] = {}  # track -> (frame, look_small) of its last saved face
        started = time.time()  # a camera's session: its stem has the time, and is never taken for an earlier one's
        self.stem = "" if src.stills else table.stem(source_stem(src.label, src.live, started), src.label,
                                                     f"@{started}" if src.live else "")
        self._said = time.monotonic()

    def write(self, result: FrameResult) -> None:
        frame, c = result.frame, self.counts
        c.frames += 1
        if self.src.stills:
            self.last.clear()  # each photo on its own: tracks start again
        elif c.frames % 100 == 0:
            alive = {t.id for t in self.rec.tracker.tracks}
            self.last = {k: v for k, v in self.last.items() if k in alive}
        angles = {t.id: t.angle for t in self.rec.tracker.tracks}
        gray = to_gray(frame.image) if result.faces else None
        for face in result.faces:
            if self.stop.reason:
                break
            c.faces += 1
            self._consider(face, gray, frame, angles.get(face.track, 0.0))
        if time.monotonic() - self._said >= PROGRESS_SECONDS:
            self._said = time.monotonic()
            log.info(f"emo-edge: collect: {c.line()}")

    def _consider(self, face: Face, gray: np.ndarray, frame: Frame, angle: float) -> None:
        c, o = self.counts, self.o
        last = self.last.get(face.track)
        if last is not None and frame.index - last[0] < o.every:
            c.spaced += 1
            return
        crop = crop_face(gray, face.box, self.spec, angle)
        sharp = sharpness(crop)
        if sharp < o.min_sharpness:
            c.blurred += 1
            return
        small = look_small(crop)
        if last is not None and change(small, last[1]) < o.min_change:
            c.duplicate += 1
            return
        self.last[face.track] = (frame.index, small)
        image = frame.name if self.src.stills else ""
        if not self.src.live and self.table.has(row_key(self.src.label, image, frame.index, face.track)):
            c.already += 1
        else:
            self._save(face, crop, sharp, frame, image)
        if o.max_faces and c.saved + c.already >= o.max_faces:
            self.stop.set(MAX_FACES)

    def _save(self, face: Face, crop: np.ndarray, sharp: float, frame: Frame, image: str) -> None:
        stem = self.stem or self.table.stem(name_stem(Path(image).stem), self.src.label, image)
        group = f"{stem}-t{face.track}"
        name = f"{face.emotion}/{group}_f{frame.index:06d}.png"
        ok, png = cv2.imencode(".png", crop)
        if not ok:
            raise EmoError(f"could not encode the face {name} as PNG")
        atomic_write_bytes(self.o.out / name, png.tobytes())
        x, y, w, h = face.box
        self.table.append({"file": name, "group": group, "emotion": face.emotion, "source": self.src.label,
                           "image": image, "frame": frame.index, "time": round(frame.timestamp, 3), "track": face.track,
                           "x": x, "y": y, "w": w, "h": h, **{k: face.scores[k] for k in LABELS},
                           "sharpness": round(sharp, 1)})
        self.counts.saved += 1
        self.counts.per_emotion[face.emotion] = self.counts.per_emotion.get(face.emotion, 0) + 1

    def close(self) -> None:
        pass


def open_out(out: Path) -> FacesTable:
    """DIR's table, and a folder per emotion, or an EmoError (DIR a file or not writable, a CSV not
    ours, another collect in it), nothing written into DIR before the CSV is found to be ours."""
    if exists(out) and not is_dir(out):
        raise EmoError(f"--out {shown(out)} is a file; give a folder (it is made when missing)")
    table = FacesTable(check_writable_dir(out, "--out"))
    try:
        for label in LABELS:
            check_writable_dir(out / label, "--out")
    except BaseException:
        table.close()
        raise
    return table


def collect(o: CollectOptions) -> int:
    """Run `emo-edge collect`; returns the exit status (0, or 130/143 when stopped by a signal)."""
    from .pipeline import run
    from .sources import open_source

    if o.size < 16:
        raise EmoError(f"--size {o.size} is too small; give at least 16 pixels")
    rec = o.recognizer()
    sink, table, summary = None, None, None
    try:
        with signals() as stop:
            try:
                src = open_source(o.source, o.width, o.height, o.fps, o.reconnect, stop=stop, timeout=o.timeout)
                try:
                    table = open_out(o.out)
                    sink = CollectSink(o, table, rec, src, stop)
                except BaseException:
                    src.close()
                    raise
                summary = run(src, src.label, rec, [sink], o.max_frames, o.duration, stop)
            except EmoError as e:
                if not stop.reason or sink is None:
                    raise
                print(f"emo-edge: stopped by {stop.reason} ({e})", file=sys.stderr)
    finally:  # the table is closed after the signal handlers are restored
        if table is not None:
            table.close()
    return report(o, sink, table, summary.stopped_by if summary else stop.reason, stop, rec)


def report(o: CollectOptions, sink: Optional[CollectSink], table: FacesTable, stopped_by: Optional[str],
           stop: StopFlag, rec: Recognizer) -> int:
    c = sink.counts if sink else Counts()
    per = ", ".join(f"{k} {c.per_emotion[k]}" for k in LABELS if k in c.per_emotion)
    print(f"emo-edge: saved {c.saved} faces into {shown(o.out)}{f' ({per})' if per else ''}; skipped {c.blurred} blurred, "
          f"{c.duplicate} duplicate, {c.spaced} within --every {o.every}, {c.already} saved before; "
          f"{table.rows} rows in {shown(o.out / CSV_NAME)}", file=sys.stderr)
    if o.detector == "auto" and rec.face_detector.name == "haar":
        from .faces import haar_fallback_line

        print(f"emo-edge: {haar_fallback_line()} (and turns faces upright by their eyes)", file=sys.stderr)
    if stopped_by and stopped_by != MAX_FACES:
        print(f"emo-edge: stopped by {stopped_by} after {c.frames} frames; what was saved is kept, rerun to go on",
              file=sys.stderr)
        return stopped_status(stop)
    return 0
