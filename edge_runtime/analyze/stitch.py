"""The driver's side of a chunked analysis (`emo-edge analyze --ray`): each video's chunks
(:mod:`.chunks`) put back together into the rows and tracks of an unsplit run, and finished
chunks kept on disk so that a rerun skips them.

:class:`Stitcher` takes a video's chunks in time order. At each boundary it checks that the
chunk's lead-in decoded the same frames as the end of the chunk before, and that the tracker
state after the lead-in equals the state that chunk ended with, the ids aside
(:func:`same_state`); then the chunk's track ids are renumbered to the unsplit run's
(:class:`IdMap`). A chunk that fails the check runs again, seeded with the previous chunk's end
state (and, where the frames differed, reaching its first frame by reading, not seeking), so no
boundary ends a track. The rows are replayed through :meth:`~emo.edge_runtime.ledger.TrackLedger.add_frame` in
time order, so each track's sums are added up in a local run's order, and
:func:`.video.write_outputs` writes the files, as for a local run.

:class:`ChunkedVideo` is one video of the batch: its plan, the chunks still to run, what came
back, and its outputs once the last chunk is stitched. :func:`analyze_chunked` runs one video's
chunks one after another in this process (the Python API's way to check the stitching).
"""
from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import EmoError
from ..files import atomic_write_text, shown
from ..ledger import TrackLedger
from ..tracking import IouTracker, Track
from .chunks import ChunkResult, ChunkSpec, plan_chunks, run_chunk
from .jobs import Job
from .video import (AnalyzeOptions, Counts, CsvRows, VideoFacts, VideoResult, check_recording, claim, identity,
                    is_complete, is_url, raw_path, video_input, write_outputs)

CHUNKS_DIR = ".emo-chunks"  # in a video's output folder: finished chunks, so that a rerun skips them
FORMAT = 1  # of a chunk file; another makes old chunk files be redone


def same_state(a: IouTracker, b: IouTracker) -> Optional[dict]:
    """Whether trackers ``a`` and ``b`` will give the same answers from here on: the same tracks,
    in the same order, with the same boxes, looks, tilts, scores and frames unseen. Returns the
    map from ``b``'s track ids to ``a``'s, or None."""
    if (a.iou_threshold, a.smooth, a.max_missed) != (b.iou_threshold, b.smooth, b.max_missed) or len(a.tracks) != len(b.tracks):
        return None
    ids = {}
    for ta, tb in zip(a.tracks, b.tracks):
        if (tuple(ta.box) != tuple(tb.box) or ta.missed != tb.missed or ta.angle != tb.angle
                or not _same_array(ta.scores, tb.scores) or not _same_array(ta.look, tb.look)):
            return None
        ids[tb.id] = ta.id
    return ids


def _same_array(x, y) -> bool:
    if x is None or y is None:
        return x is None and y is None
    return x.dtype == y.dtype and x.shape == y.shape and bool(np.array_equal(x, y))


@dataclass
class IdMap:
    """A chunk's track ids to the unsplit run's: ``known`` for the tracks it took over from the
    chunk before; a track it started gets the ids that follow, in its order."""

    known: dict = field(default_factory=dict)
    base_local: int = 1  # the chunk's first new id
    base_global: int = 1  # ... is this id of the whole run

    def __call__(self, track: int) -> int:
        if track in self.known:
            return self.known[track]
        if track < self.base_local:
            raise EmoError(f"stitching: track {track} is neither taken over nor new (an emo bug; please report it)")
        return track - self.base_local + self.base_global


class Stitcher:
    """One video's chunks, put together in time order into ``raw`` (the rows, as a local run
    streams them) and :attr:`sums`. :meth:`check` says whether a chunk continues what is
    stitched so far exactly; :meth:`add` appends it."""

    def __init__(self, raw: Path, labels, fps: float):
        self.raw, self.labels, self.fps = raw, labels, fps
        self.fh = None  # opened with the first chunk (a batch of many videos holds no file open per video)
        self.sums = TrackLedger(labels)
        self.next = 0  # the index of the next chunk to add
        self.prev: Optional[ChunkResult] = None
        self.prev_map = IdMap()
        self.frames = self.rows = 0
        self.last_index = -1
        self.seeded = 0  # chunks that had to run again from the previous one's state
        self.cpu_seconds = 0.0  # of the chunks stitched (their workers' CPU time)
        self.ended = False  # the video ended before the last chunk planned (its container said more frames)

    def check(self, r: ChunkResult) -> tuple[Optional[IdMap], str]:
        """(the id map of chunk ``r``, the next one, if it continues the stitched chunks exactly,
        else None, and why not: "frames" (its lead-in decoded other frames: the container's seek
        missed) or "state" (the trackers differ)). Without a map, ``r`` runs again, seeded with
        :attr:`prev`'s end state."""
        if r.index == 0 or self.ended:
            return IdMap(), ""
        p = self.prev
        if r.fps != self.fps or not r.lead_digests or r.lead_digests != p.end_digests:
            return None, "frames"
        if r.seeded:
            return self.prev_map, ""  # the previous chunk's tracker, carried on: its numbering too
        ids = same_state(p.end_state, r.lead_state)
        if ids is None:
            return None, "state"
        return IdMap({b: self.prev_map(a) for b, a in ids.items()}, r.lead_state.next_id, self.prev_map(p.end_state.next_id)), ""

    def add(self, r: ChunkResult, ids: IdMap) -> None:
        """Append chunk ``r`` (checked) with its ids renumbered, replaying its rows into the sums."""
        if self.fh is None:
            self.fh = open(self.raw, "w", newline="", encoding="utf-8")
            self.writer = csv.writer(self.fh, lineterminator="\n")
            CsvRows(self.fh, self.labels)  # the header
        if self.ended:
            if r.rows:
                raise EmoError(f"chunk {r.index} has rows after the end of the video (an emo bug; please report it)")
        else:
            n = len(self.labels)
            frame, faces = None, []
            for row in csv.reader(io.StringIO(r.rows_csv)):
                row[2] = str(ids(int(row[2])))
                self.writer.writerow(row)
                index = int(row[1])
                if index != frame:
                    if faces:
                        self.sums.add_frame(frame, frame / self.fps, faces)
                    frame, faces = index, []
                box = tuple(int(v) for v in row[3:7])
                faces.append((int(row[2]), box, np.array([float(v) for v in row[7: 7 + n]]), None))
            if faces:
                self.sums.add_frame(frame, frame / self.fps, faces)
            for track, (first, last) in r.looks.items():  # the looks rows do not carry: first and last seen
                s = self.sums.tracks[ids(track)]
                if s.first_look is None:
                    s.first_look = first
                if last is not None:
                    s.last_look = last
            self.frames += r.frames
            self.rows += r.rows
            self.last_index = max(self.last_index, r.last_index)
            if r.end is not None and r.last_index < r.end - r.stride:
                self.ended = True  # no frames left for the chunks after it
        self.sums.last_index = self.last_index
        self.seeded += r.seeded
        self.cpu_seconds += r.cpu_seconds
        self.prev, self.prev_map, self.next = r, ids, self.next + 1

    def close(self) -> None:
        """Finish the rows file (every chunk added)."""
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()

    def abandon(self) -> None:
        """Close and remove the rows file of a video that will not finish in this run."""
        if self.fh is not None and not self.fh.closed:
            self.fh.close()
        _unlink(self.raw)


# --- finished chunks on disk (a rerun skips them) --------------------------------------------------

class ChunkStore:
    """Finished chunks of one video in ``out/.emo-chunks/``, one JSON file each (plain data: a
    chunk file is read, never run), written atomically by the driver (never by a node), keyed by
    everything that decides their content."""

    def __init__(self, out: Path, params: dict, ident: dict):
        self.dir = out / CHUNKS_DIR
        self.base = json.dumps({"format": FORMAT, "parameters": params, "video": ident}, sort_keys=True)

    def key(self, spec: ChunkSpec, seeded_after: Optional[str] = None) -> str:
        what = [self.base, spec.start, spec.end, spec.lead, spec.stride, spec.lead_in, seeded_after]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()

    def path(self, spec: ChunkSpec, seeded: bool) -> Path:
        return self.dir / f"{spec.index:05d}{'-seeded' if seeded else ''}.json"

    def load(self, spec: ChunkSpec, seeded_after: Optional[str] = None) -> Optional[ChunkResult]:
        try:
            doc = json.loads(self.path(spec, seeded_after is not None).read_text(encoding="utf-8"))
            if not isinstance(doc, dict) or doc.get("key") != self.key(spec, seeded_after):
                return None
            return _from_doc(doc["result"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing, torn or of another version
            return None

    def save(self, spec: ChunkSpec, r: ChunkResult, seeded_after: Optional[str] = None) -> str:
        key = self.key(spec, seeded_after)
        self.dir.mkdir(exist_ok=True)
        atomic_write_text(self.path(spec, seeded_after is not None), json.dumps({"key": key, "result": _to_doc(r)}))
        return key

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _to_doc(r: ChunkResult) -> dict:
    d = {f.name: getattr(r, f.name) for f in fields(r)}
    d["looks"] = [[k, _array(a), _array(b)] for k, (a, b) in r.looks.items()]
    d["lead_state"], d["end_state"] = _tracker(r.lead_state), _tracker(r.end_state)
    d["lead_digests"], d["end_digests"] = list(r.lead_digests.items()), list(r.end_digests.items())
    return d


def _from_doc(d: dict) -> ChunkResult:
    d = dict(d)
    d["looks"] = {k: (_unarray(a), _unarray(b)) for k, a, b in d["looks"]}
    d["lead_state"], d["end_state"] = _untracker(d["lead_state"]), _untracker(d["end_state"])
    d["lead_digests"], d["end_digests"] = dict(d["lead_digests"]), dict(d["end_digests"])
    return ChunkResult(**d)


def _tracker(t: Optional[IouTracker]) -> Optional[dict]:
    if t is None:
        return None
    return {"iou_threshold": t.iou_threshold, "smooth": t.smooth, "max_missed": t.max_missed, "first_id": t.next_id,
            "tracks": [{"id": k.id, "box": list(k.box), "scores": _array(k.scores), "missed": k.missed, "angle": k.angle,
                        "look": _array(k.look)} for k in t.tracks]}


def _untracker(d: Optional[dict]) -> Optional[IouTracker]:
    if d is None:
        return None
    tracks = [Track(k["id"], tuple(k["box"]), _unarray(k["scores"]), k["missed"], k["angle"], _unarray(k["look"]))
              for k in d["tracks"]]
    return IouTracker(d["iou_threshold"], d["smooth"], d["max_missed"], d["first_id"], tracks)


def _array(a: Optional[np.ndarray]) -> Optional[list]:
    """An array as [dtype, shape, base64 of its bytes]: restored bit for bit."""
    return None if a is None else [a.dtype.str, list(a.shape), base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()]


def _unarray(d: Optional[list]) -> Optional[np.ndarray]:
    return None if d is None else np.frombuffer(base64.b64decode(d[2]), np.dtype(d[0])).reshape(d[1]).copy()


@dataclass
class Task:
    """A chunk to run: from its lead-in, or seeded with the tracker the chunk before ended with."""

    video: "ChunkedVideo"
    spec: ChunkSpec
    seed: Optional[IouTracker] = None
    seek: bool = True
    seeded_after: Optional[str] = None  # the key of the chunk the seed comes from
    attempts: int = 0  # runs lost with their worker


class ChunkedVideo:
    """One video of a chunked analysis, on the driver: probe and plan it, hand out its chunks
    (:meth:`tasks`), take what comes back (:meth:`take`), stitch, and write the outputs when the
    last chunk is in. ``status``: todo, skipped (complete already), done or failed."""

    def __init__(self, job: Job, o: AnalyzeOptions, params: dict, rec, force: bool, index: int = 0):
        from ..sources import VideoSource

        self.job, self.o, self.params, self.rec, self.force = job, o, params, rec, force
        self.index = index  # in the batch
        self.label, self.out = shown(job.video), job.out
        self.t0, self.begun = time.monotonic(), False
        self.result: Optional[VideoResult] = None
        path = video_input(job.video)
        self.ident = identity(path)
        if not force and is_complete(job.out, params, self.ident):
            self.status = "skipped"
            self.result = VideoResult(self.label, shown(job.out), "skipped", "complete, same parameters")
            return
        self.status = "todo"
        src = VideoSource(path, self.label, False)
        try:
            import cv2

            check_recording(src, self.label)
            fps, frames = src.fps, int(src.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            size = list(src.size) if src.size else None
        finally:
            src.close()
        self.facts = VideoFacts(self.ident, fps, size, frames)
        self.path = path

    def plan(self, chunk_seconds: float) -> None:
        """Claim the output folder, cut the video into chunks and find those an earlier run finished."""
        claim(self.out, self.ident, self.force)
        self.store = ChunkStore(self.out, self.params, self.ident)
        if self.force:
            self.store.clear()
        f = self.facts
        where = self.path if is_url(self.path) else os.path.abspath(self.path)  # as every node opens it
        self.specs = plan_chunks(where, self.ident["bytes"], f.frames_reported, f.fps, self.o, chunk_seconds)
        self.results: dict[int, tuple[ChunkResult, str]] = {}  # index -> (a lead-in run, its key), until stitched
        self.seeded: dict[int, tuple[ChunkResult, str]] = {}  # index -> (a seeded run, its key)
        self.asked: set[int] = set()  # seeded runs asked for
        for spec in self.specs:
            r = self.store.load(spec)
            if r is not None:
                self.results[spec.index] = (r, self.store.key(spec))
        self.cached = len(self.results)
        self.raw = raw_path(self.out)
        self.stitcher = Stitcher(self.raw, self.rec.labels, f.fps)
        self.prev_key: Optional[str] = None

    @property
    def video_seconds(self) -> float:
        return self.facts.frames_reported / self.facts.fps

    def chunk_seconds(self, spec: ChunkSpec) -> float:
        """The seconds of video a chunk stands for (for throughput)."""
        end = self.facts.frames_reported if spec.end is None else spec.end
        return max(0, end - spec.start) / self.facts.fps

    def begin(self) -> None:
        """Its first chunk goes to a worker: the video's time (summary.json, its line) counts from here."""
        if not self.begun:
            self.t0, self.begun = time.monotonic(), True

    def tasks(self) -> list[Task]:
        """The chunks to run that no earlier run finished (then the ones found are stitched)."""
        return [Task(self, s) for s in self.specs if s.index not in self.results]

    def take(self, task: Task, r: Union[ChunkResult, str]) -> list[Task]:
        """What a chunk's run gave: keep it (on disk too), stitch what can be, and say which
        chunks must run again, seeded. A message (str) fails the video."""
        if self.status != "todo":
            return []
        if isinstance(r, str):
            self.fail(r if "chunk" in r else f"{task.spec.name}: {r}")
            return []
        key = self.store.save(task.spec, r, task.seeded_after)
        (self.seeded if task.seed is not None else self.results)[task.spec.index] = (r, key)
        return self.advance()

    def advance(self) -> list[Task]:
        """Stitch the chunks that are in, in order; the seeded runs needed, if any."""
        st = self.stitcher
        try:
            while st.next < len(self.specs):
                i, spec = st.next, self.specs[st.next]
                if i in self.seeded:
                    r, key = self.seeded[i]
                elif i in self.results and i not in self.asked:
                    r, key = self.results[i]
                else:
                    return []  # not in yet
                ids, why = st.check(r)
                if ids is None:
                    if r.seeded and (why != "frames" or not r.seek):
                        raise EmoError(f"{spec.name}: seeded run does not continue the chunk before ({why}; an emo bug, "
                                       "please report it)")
                    self.seeded.pop(i, None)
                    self.asked.add(i)
                    found = self.store.load(spec, self.prev_key)
                    if found is not None and not (found.seek and why == "frames" and r.seeded):
                        self.seeded[i] = (found, self.store.key(spec, self.prev_key))
                        continue
                    return [Task(self, spec, st.prev.end_state, seek=why != "frames", seeded_after=self.prev_key)]
                st.add(r, ids)
                self.prev_key = key
                self.results.pop(i, None)
                self.seeded.pop(i, None)
            self.finish()
        except EmoError as e:
            self.fail(str(e))
        return []

    def finish(self) -> None:
        st = self.stitcher
        st.close()
        try:
            timing = {"runner": "chunks", "chunks": len(self.specs), "chunks_seeded": st.seeded,
                      "chunks_from_an_earlier_run": self.cached, "chunks_cpu_seconds": round(st.cpu_seconds, 2)}
            self.result = write_outputs(self.out, self.raw, st.sums, Counts(st.frames, st.rows), self.rec, self.o,
                                        self.params, self.facts, self.label, self.t0, timing)
        finally:
            _unlink(self.raw)
        self.store.clear()
        self.status = "done"

    def fail(self, message: str) -> None:
        """The video fails (its finished chunks stay on disk for a rerun)."""
        self.status = "failed"
        self.result = VideoResult(self.label, shown(self.out), "failed", message, seconds=time.monotonic() - self.t0)
        self.close()

    def close(self) -> None:
        """Let go of a video that will not finish in this run (failed or stopped)."""
        if hasattr(self, "stitcher"):
            self.stitcher.abandon()


def _unlink(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def analyze_chunked(video, out, options: Optional[AnalyzeOptions] = None, chunk_seconds: float = 60.0,
                    force: bool = False) -> VideoResult:
    """One video cut into chunks of about ``chunk_seconds``, run one after another in this
    process and stitched: the same outputs as :func:`.video.analyze_video` (what `--ray` does on
    a cluster, without one). Raises EmoError when the video cannot be read."""
    o = options or AnalyzeOptions()
    o.check()
    rec = o.recognizer()
    v = ChunkedVideo(Job(video_input(video), Path(out), 0), o, o.parameters(), rec, force)
    if v.status == "skipped":
        return v.result
    v.plan(chunk_seconds)
    todo = v.tasks()
    later = []
    while todo and v.status == "todo":
        t = todo.pop(0)
        later = v.take(t, run_chunk(rec, t.spec, t.seed, t.seek))
        todo = later + todo
    if v.status == "todo":
        v.advance()
    if v.status == "failed":
        raise EmoError(v.result.message)
    return v.result
