"""The driver's side of a chunked analysis (`emo-edge analyze --ray`): each video's chunks
(:mod:`.chunks`) put back together into the rows and tracks of an unsplit run, and finished
chunks kept on disk so that a rerun skips them (:mod:`.chunkstore`).

:class:`.stitcher.Stitcher` takes a video's chunks in time order. At each boundary it checks that the
chunk's lead-in decoded the same frames as the end of the chunk before, and that the tracker
state after the lead-in equals the state that chunk ended with, the ids aside
(:func:`.stitcher.same_state`); then the chunk's track ids are renumbered to the unsplit run's
(:class:`.stitcher.IdMap`). A chunk that fails the check runs again, seeded with the previous chunk's end
state (and, where the frames differed, reaching its first frame by reading, not seeking), so no
boundary ends a track. The rows are replayed through :meth:`~emo.edge_runtime.ledger.TrackLedger.add_frame` in
time order, so each track's sums are added up in a local run's order, and
:func:`.outputs.write_outputs` writes the files, as for a local run.

:class:`ChunkedVideo` is one video of the batch: its plan, the chunks still to run, what came
back, and its outputs once the last chunk is stitched. :func:`analyze_chunked` runs one video's
chunks one after another in this process (the Python API's way to check the stitching).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ..errors import EmoError
from ..files import discard, shown
from ..tracking import IouTracker
from .chunks import ChunkResult, ChunkSpec, plan_chunks, run_chunk
from .chunkstore import CHUNKS_DIR, ChunkStore  # noqa: F401 (CHUNKS_DIR: imported from here too)
from .folder import claim, is_complete, raw_path
from .inputs import check_recording, identity, is_url, video_input
from .jobs import Job
from .options import AnalyzeOptions, VideoResult
from .outputs import Counts, VideoFacts, write_outputs
from .stitcher import Stitcher


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
            discard(self.raw)
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
