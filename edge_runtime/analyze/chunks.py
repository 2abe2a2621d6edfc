"""Time chunks of one video, for `emo-edge analyze --ray`: the plan and one chunk's run (on a
node). :mod:`.stitch` puts the chunks back together into the rows and tracks of an unsplit run.

A chunk owns the frames ``[start, end)``. Its run (:func:`run_chunk`) is the one frame loop
(:func:`emo.edge_runtime.pipeline.run`) over a :class:`~emo.edge_runtime.sources.VideoSource`
that begins at a frame, with the sinks of a local run (:class:`.outputs.CsvRows`,
:class:`~emo.edge_runtime.ledger.TrackLedger`) fed the chunk's own frames only.

The tracker has a state (its tracks: box, look, frames unseen, scores, id), so a frame's rows
depend on the frames before it. A chunk therefore begins with a *lead-in*: it runs the last
:func:`lead_frames` processed frames of the chunk before through the same loop, keeping their
tracker state and dropping their rows. A track that was not seen in the last ``max_missed + 1``
frames is forgotten by the tracker anyway; the lead-in is twice that. :class:`.stitch.Stitcher`
then checks each boundary: the decoded frames of the overlap must be the same (a seek that did not
land on its frame shows here), and the tracker state after the lead-in must equal the state the
chunk before ended with, track for track (same boxes, looks, scores, frames unseen, in the same
order), the ids aside. Then every later frame of the chunk gives exactly the rows an unsplit run
gives, and the chunk's track ids are renumbered to the unsplit run's. Where the states differ
(rare with ``--smooth 0``: two faces near each other crossing the boundary; with ``--smooth``
above 0 whenever a face is on screen at the boundary, since smoothed scores carry every earlier
frame), the chunk runs again, *seeded* with the previous chunk's end state, which waits for that
chunk but is exact by construction. So no chunk boundary ends or splits a track: the outputs are
those of a local run, row for row.
"""
from __future__ import annotations

import copy
import hashlib
import io
import os
import socket
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import EmoError
from ..files import shown
from ..ledger import TrackLedger
from ..stopping import StopFlag
from ..tracking import IouTracker
from .inputs import check_recording, is_url, url_facts
from .options import AnalyzeOptions
from .outputs import CsvRows

MIN_CHUNK_SECONDS = 10.0


def lead_frames(o: AnalyzeOptions) -> int:
    """Processed frames of lead-in: twice as many as the tracker keeps an unseen track, rounded up
    to whole detection cycles (so a chunk's first frame is a detection frame, as in a whole run)."""
    need = 2 * (IouTracker().max_missed + 1)
    return -(-need // o.detect_every) * o.detect_every


@dataclass(frozen=True)
class ChunkSpec:
    """One chunk of one video: what a node needs to run it."""

    video: str  # the path (or http(s) URL) as every node opens it
    bytes: Optional[int]  # the file's size as the driver sees it (None: a URL whose server does not say)
    index: int
    start: int  # first frame it owns
    end: Optional[int]  # first frame it does not own (None: to the end of the video)
    lead: int  # first frame it reads: start less the lead-in, at least 0
    stride: int
    lead_in: int  # processed frames of lead-in (lead_frames), for the overlap of the next chunk

    @property
    def name(self) -> str:
        return f"chunk {self.index} (frames {self.start}-{'end' if self.end is None else self.end - 1})"


def plan_chunks(video: str, size: Optional[int], frames: int, fps: float, o: AnalyzeOptions, chunk_seconds: float) -> list[ChunkSpec]:
    """Cut a video of ``frames`` frames (as its container says; 0: unknown) into chunks of about
    ``chunk_seconds``, each starting on a detection frame of the whole run. The last chunk runs
    to the end of the video, however many frames the container reported."""
    align = o.stride * o.detect_every
    lead = lead_frames(o)
    length = max(1, round(chunk_seconds * fps / align)) * align
    length = max(length, 2 * lead * o.stride)  # a chunk is well over its lead-in (lead * stride: a multiple of align)
    n = max(1, int(frames / length + 0.5)) if frames > 0 else 1
    starts = [k * length for k in range(n)]
    return [ChunkSpec(video, size, k, s, starts[k + 1] if k + 1 < n else None, max(0, s - lead * o.stride), o.stride, lead)
            for k, s in enumerate(starts)]


def auto_chunk_seconds(total_seconds: float, cpus: int, longest: float = 60.0) -> float:
    """Chunks of ``longest`` seconds, shorter (down to MIN_CHUNK_SECONDS) where a batch would
    otherwise give some CPUs nothing to do."""
    return max(MIN_CHUNK_SECONDS, min(longest, total_seconds / max(1, cpus)))


# --- one chunk, on a node ------------------------------------------------------------------------

@dataclass
class ChunkResult:
    """What a chunk's run gives the driver (rows with the chunk's own track ids)."""

    index: int
    start: int
    end: Optional[int]
    stride: int
    seeded: bool  # run from the previous chunk's end state instead of a lead-in
    seek: bool  # reached its first frame by the container's seek (False: by reading every frame before it)
    fps: float
    rows_csv: str  # the rows of its own frames, as CsvRows writes them, without the header
    rows: int
    frames: int  # its own frames processed
    last_index: int  # the last of them (-1: none)
    looks: dict  # track -> (first look, last look) over its own frames (None where unknown)
    lead_state: Optional[IouTracker]  # the tracker after the lead-in (None: no lead-in)
    lead_digests: dict  # frame index -> digest, over the lead-in
    end_state: IouTracker  # the tracker after its last frame
    end_digests: dict  # frame index -> digest, over the frames the next chunk's lead-in reads
    host: str = ""
    seconds: float = 0.0  # wall time of the run
    cpu_seconds: float = 0.0  # CPU time of the worker process over the run


class ChunkSink:
    """The sink a chunk's loop feeds: rows and sums of the chunk's own frames, the tracker's
    state after the lead-in and digests of the frames of both overlaps."""

    def __init__(self, spec: ChunkSpec, tracker_of, labels, lead_digests: dict):
        self.spec, self.tracker_of = spec, tracker_of
        self.buf = io.StringIO()
        self.rows, self.sums = CsvRows(self.buf, labels), TrackLedger(labels)
        self.frames = 0
        self.lead_state: Optional[IouTracker] = None
        self.lead_digests = lead_digests
        self.end_digests: dict = {}
        self.tail_from = None if spec.end is None else spec.end - spec.lead_in * spec.stride

    def write(self, result) -> None:
        i = result.frame.index
        if i < self.spec.start:
            self.lead_state = copy.deepcopy(self.tracker_of())
            self.lead_digests[i] = digest(result.frame.image)
        else:
            self.rows.write(result)
            self.sums.write(result)
            self.frames += 1
        if self.tail_from is not None and i >= self.tail_from:
            self.end_digests[i] = digest(result.frame.image)

    def close(self) -> None:
        pass


class SkipTo:
    """A video source that passes on frames from ``start`` only, keeping digests of the frames
    it skipped (a seeded chunk decodes its lead-in frames, to check them, but does not analyse
    them). Whatever else a source says of itself (label, fps, live, ...) is the video's."""

    def __init__(self, source, start: int, digests: dict):
        self.source, self.start, self.digests = source, start, digests

    def __getattr__(self, name: str):
        return getattr(self.source, name)

    def __iter__(self):
        for frame in self.source:
            if frame.index < self.start:
                self.digests[frame.index] = digest(frame.image)
            else:
                yield frame

    def close(self) -> None:
        self.source.close()


def digest(image: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest()


def run_chunk(rec, spec: ChunkSpec, seed: Optional[IouTracker] = None, seek: bool = True,
              stop: Optional[StopFlag] = None) -> ChunkResult:
    """Run one chunk with ``rec`` (a Recognizer, loaded once per worker): its lead-in, then its
    own frames; or, with ``seed`` (the tracker the previous chunk ended with), its own frames
    from that state, the lead-in frames only decoded (to check them). ``seek=False`` reaches the
    first frame by reading every frame before it (for a container whose seek did not land where
    it said). Raises EmoError when the video cannot be read here."""
    from ..pipeline import run
    from ..sources import VideoSource

    t0, cpu0, label = time.monotonic(), time.process_time(), shown(spec.video)
    check_input(spec)
    rec.reset()
    if seed is not None:
        rec.tracker = copy.deepcopy(seed)
    video = VideoSource(spec.video, label, False, stop=stop, stride=spec.stride, start=spec.lead, seek=seek)
    try:
        check_recording(video, label)
    except EmoError:
        video.close()
        raise
    lead_digests: dict = {}
    src = SkipTo(video, spec.start, lead_digests) if seed is not None else video
    sink = ChunkSink(spec, lambda: rec.tracker, rec.labels, lead_digests)
    first = spec.start if seed is not None else spec.lead
    limit = 0 if spec.end is None else -(-(spec.end - first) // spec.stride)
    summary = run(src, label, rec, [sink], max_frames=limit, stop=stop)
    if summary.stopped_by:
        raise EmoError(f"{spec.name} stopped by {summary.stopped_by}")
    if summary.frames == 0 and spec.start == 0:
        raise EmoError(f"{label} has no frames OpenCV can decode (empty or corrupt video)")
    looks = {k: (s.first_look, s.last_look) for k, s in sink.sums.tracks.items()}
    text = sink.buf.getvalue()
    return ChunkResult(spec.index, spec.start, spec.end, spec.stride, seed is not None, seek, video.fps,
                       text[text.index("\n") + 1:], sink.rows.rows, sink.frames, sink.sums.last_index, looks,
                       sink.lead_state, lead_digests, copy.deepcopy(rec.tracker), sink.end_digests,
                       socket.gethostname(), time.monotonic() - t0, time.process_time() - cpu0)


def check_input(spec: ChunkSpec) -> None:
    """A node must see the driver's file: the same path (or URL), the same size."""
    where = f"on node {socket.gethostname()}"
    if is_url(spec.video):
        try:
            size = url_facts(spec.video)[0]
        except EmoError as e:
            raise EmoError(f"{e} {where}: every node must reach the inputs' URLs") from None
    else:
        try:
            size = os.stat(spec.video).st_size
        except OSError as e:
            raise EmoError(f"{shown(spec.video)} cannot be read {where} ({e.strerror}): every node must see the inputs at "
                           "the same path (a shared file system, or URLs; see docs/analyze-ray.md)") from None
    if None not in (size, spec.bytes) and size != spec.bytes:
        raise EmoError(f"{shown(spec.video)} {where} is {size} bytes, not {spec.bytes} as where analyze runs: another "
                       "file at the same path; every node must see the same inputs")


class ChunkWorker:
    """What a Ray actor holds: the model and the face detector, loaded once, for many chunks.
    Never raises: a problem on this node is said in :attr:`problem` and in each chunk's answer."""

    def __init__(self, options: AnalyzeOptions, parameters: dict):
        import cv2

        cv2.setNumThreads(1)  # one CPU per worker: OpenCV's own threads would only compete
        self.host, self.problem, self.rec = socket.gethostname(), "", None
        try:
            here = options.parameters()
            if here != parameters:
                diff = sorted(k for k in set(here) | set(parameters) if here.get(k) != parameters.get(k))
                raise EmoError(f"the analysis would differ on node {self.host}: {', '.join(diff)} "
                               + ("differs" if len(diff) == 1 else "differ") + " from where analyze runs; give every node "
                               "the same emo, model and detector files, or name them (--model, --detector haar, "
                               "--detector-model)")
            self.rec = options.recognizer()
        except EmoError as e:
            self.problem = str(e)
        except Exception as e:  # noqa: BLE001 - said to the driver, which reports it
            self.problem = f"node {self.host}: unexpected {type(e).__name__}: {str(e)[:200]}"

    def where(self) -> tuple[str, str]:
        """(node, problem): the driver counts nodes, and drops a worker that cannot work. The Ray
        runner's actor class names its node by Ray's node id (two nodes may share a host name)."""
        return self.host, self.problem

    def run(self, spec: ChunkSpec, seed: Optional[IouTracker] = None, seek: bool = True):
        """A ChunkResult, or a one-line message (str) saying why this chunk cannot be analysed."""
        if self.problem:
            return self.problem
        try:
            return run_chunk(self.rec, spec, seed, seek)
        except EmoError as e:
            return str(e)
        except MemoryError:
            return f"{spec.name}: out of memory on node {self.host}"
        except Exception as e:  # noqa: BLE001 - one bad chunk fails its video, not the batch
            return f"{spec.name} on node {self.host}: unexpected {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
