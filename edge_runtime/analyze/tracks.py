"""The track rule of `emo-edge analyze`: how the raw tracks of the tracker, as the track ledger
(:mod:`emo.edge_runtime.ledger`, shared with the MQTT sink) summed them, become the tracks of
``tracks.csv`` (split pieces of one face merged, flicker dropped)."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from ..ledger import TrackLedger, TrackStats
from ..tracking import MAX_SCALE, same_face

TRACK_RULE = ("tracks of one face split by a short loss are merged: a track that starts at most merge_gap seconds "
              "after another ended, with its first box centre within one face width of that track's last box, "
              f"its face size within {MAX_SCALE}x of it and a face that looks alike (the colour of the face's middle, "
              "see appearance.py), continues it; then tracks on screen for less than min_track_seconds "
              "(frames x stride / fps) are dropped from tracks.csv and timeline.png (their rows stay in frames.csv)")
# (the text is part of an analysis's resume key: a new text redoes every analysis)

TrackSums = TrackLedger  # its name before the ledger (ledger.py) served MQTT too; TrackStats is the ledger's
__all__ = ["TRACK_RULE", "TrackLedger", "TrackStats", "TrackSums", "consolidate", "continues"]


# --- the rule for short and split tracks ---------------------------------------------------------

def consolidate(tracks: Sequence[TrackStats], step: float, min_seconds: float, merge_gap: float
                ) -> tuple[list[TrackStats], dict[int, int], list[TrackStats]]:
    """Apply :data:`TRACK_RULE`: (kept tracks, raw id -> kept id for merged tracks, dropped tracks).
    ``step`` is the seconds one processed frame stands for (stride / fps)."""
    final: list[TrackStats] = []
    recent: list[TrackStats] = []  # tracks that may still be continued: seen within merge_gap of the current start
    merged: dict[int, int] = {}
    for b in sorted(tracks, key=lambda s: (s.first, s.id)):
        recent = [a for a in recent if b.first - a.last <= merge_gap + 1e-9]
        best = None
        for a in recent:
            gap = b.first - a.last
            if gap > 0 and continues(a, b) and (best is None or gap < best[0]):
                best = (gap, a)
        if best is None:
            s = replace(b, sums=b.sums.copy(), peaks=b.peaks.copy(), merged_from=[])
            final.append(s)
            recent.append(s)
        else:
            best[1].absorb(b)
            merged[b.id] = best[1].id
    kept = [s for s in final if s.seconds(step) >= min_seconds - 1e-9]
    dropped = [s for s in final if s.seconds(step) < min_seconds - 1e-9]
    return kept, merged, dropped


def continues(a: TrackStats, b: TrackStats) -> bool:
    """Whether track ``b``, which starts after ``a`` ended, may be the same face: near where ``a``
    ended, of a similar size, looking alike."""
    return _near(a.last_box, b.first_box) and same_face(a.last_box, a.last_look, b.first_box, b.first_look)


def _near(a: tuple, b: tuple) -> bool:
    ca = np.array([a[0] + a[2] / 2, a[1] + a[3] / 2])
    cb = np.array([b[0] + b[2] / 2, b[1] + b[3] / 2])
    return float(np.linalg.norm(ca - cb)) <= max(a[2], b[2])
