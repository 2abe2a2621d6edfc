"""The track ledger: per-track running sums, kept by every sink that sums per person (the MQTT
sink's ``leave`` events, `emo-edge analyze`'s ``tracks.csv``). Nothing per frame is kept.

**Seconds on screen**, everywhere (:meth:`TrackStats.seconds`): the frames the track was seen in
times the seconds one processed frame stands for (the *step*). A track lost for a while and found
again (same id) counts only the frames it was seen in, not the gap, so the figure is the time the
face was actually on screen; ``last_seen - first_seen`` is the span, gap included.

The step is what the ledger is told (`emo-edge analyze`: ``stride / fps`` of the recording) or,
when it is not told (a live source, whose frames come when they come), the mean time between the
frames processed so far, measured from their timestamps (:attr:`TrackLedger.step`). For a video
file read frame by frame the two are the same.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .labels import LABELS


@dataclass
class TrackStats:
    """Running summary of one track: first and last time and box, frames seen, score sums and peaks
    (in label order), and the look where it starts and ends (None: unknown)."""

    id: int
    first: float
    last: float
    first_box: tuple
    last_box: tuple
    frames: int = 0
    sums: np.ndarray = field(default_factory=lambda: np.zeros(len(LABELS)))
    peaks: np.ndarray = field(default_factory=lambda: np.zeros(len(LABELS)))
    merged_from: list = field(default_factory=list)
    first_look: Optional[np.ndarray] = None  # appearance.look where it starts and where it ends (None: unknown)
    last_look: Optional[np.ndarray] = None

    def add(self, t: float, box: tuple, scores: np.ndarray, look: Optional[np.ndarray] = None) -> None:
        self.last, self.last_box = t, box
        if look is not None:
            self.first_look = self.first_look if self.first_look is not None else look
            self.last_look = look
        self.frames += 1
        self.sums += scores
        np.maximum(self.peaks, scores, out=self.peaks)

    def absorb(self, other: "TrackStats") -> None:
        """Continue this track with ``other``, which started after it ended (analyze's merge)."""
        self.last, self.last_box = other.last, other.last_box
        self.last_look = other.last_look if other.last_look is not None else self.last_look
        self.frames += other.frames
        self.sums += other.sums
        np.maximum(self.peaks, other.peaks, out=self.peaks)
        self.merged_from += [other.id, *other.merged_from]

    def seconds(self, step: float) -> float:
        """Seconds on screen: frames seen x ``step`` (the seconds one processed frame stands for)."""
        return self.frames * step

    @property
    def means(self) -> np.ndarray:
        return self.sums / max(1, self.frames)


class TrackLedger:
    """A sink keeping a :class:`TrackStats` per track id, and what it needs to know the step.

    ``step``: the seconds one processed frame stands for, when the caller knows it (a recording:
    stride / fps); None: measured from the frames' timestamps (see :attr:`step`)."""

    def __init__(self, labels: Sequence[str], step: Optional[float] = None):
        self.labels, self.tracks = labels, {}
        self.with_faces, self.last_index = 0, -1
        self.processed = 0  # frames added, with faces or not
        self.first_t: Optional[float] = None
        self.last_t: Optional[float] = None
        self._step = step

    @property
    def step(self) -> float:
        """The seconds one processed frame stands for: as given, else the mean time between the
        frames processed so far (0 until two frames are in)."""
        if self._step is not None:
            return self._step
        if self.processed < 2:
            return 0.0
        return (self.last_t - self.first_t) / (self.processed - 1)

    def seconds(self, track: TrackStats) -> float:
        """``track``'s seconds on screen (:meth:`TrackStats.seconds` with this ledger's step)."""
        return track.seconds(self.step)

    def write(self, result) -> None:
        self.add_frame(result.frame.index, result.frame.timestamp,
                       [(f.track, f.box, np.array([f.scores[e] for e in self.labels]), f.look) for f in result.faces])

    def add_frame(self, index: int, t: float, faces: Sequence[tuple]) -> list[TrackStats]:
        """One processed frame: ``faces`` are (track, box, scores in label order, look or None).
        Returns the tracks that start in it. The Ray runner feeds the rows of its chunks through
        here, in time order, so the sums are added up in the same order as in a local run."""
        self.last_index = index
        self.processed += 1
        self.first_t = t if self.first_t is None else self.first_t
        self.last_t = t
        self.with_faces += bool(faces)
        new = []
        for track, box, scores, look in faces:
            s = self.tracks.get(track)
            if s is None:
                n = len(self.labels)
                s = self.tracks[track] = TrackStats(track, t, t, box, box, 0, np.zeros(n), np.zeros(n))
                new.append(s)
            s.add(t, box, scores, look)
        return new

    def gone(self, t: float, after: float) -> list[TrackStats]:
        """Remove and return the tracks last seen at least ``after`` seconds before ``t``."""
        ids = [k for k, s in self.tracks.items() if t - s.last >= after]
        return [self.tracks.pop(k) for k in ids]

    def pop_all(self) -> list[TrackStats]:
        """Remove and return every track (the source ended: they all leave)."""
        out = list(self.tracks.values())
        self.tracks.clear()
        return out

    def close(self) -> None:
        pass
