"""One video's chunks put back together, boundary by boundary (:class:`Stitcher`), into the rows
and track sums of an unsplit run. See :mod:`.stitch` for how the driver uses it.

At each boundary the chunk's lead-in must have decoded the same frames as the end of the chunk
before, and the tracker state after the lead-in must equal the state that chunk ended with, the
ids aside (:func:`same_state`); then the chunk's track ids are renumbered to the unsplit run's
(:class:`IdMap`). The rows are replayed through the track ledger
(:meth:`~emo.edge_runtime.ledger.TrackLedger.add_frame`) in time order, so each track's sums are
added up in a local run's order."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import EmoError
from ..files import discard
from ..ledger import TrackLedger
from ..tracking import IouTracker
from .chunks import ChunkResult
from .outputs import CsvRows


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
        discard(self.raw)
