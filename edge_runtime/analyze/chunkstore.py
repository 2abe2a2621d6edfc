"""Finished chunks of a chunked analysis (`emo-edge analyze --ray`) kept on disk, in the video's
output folder, so that a rerun skips them: one JSON file per chunk (plain data, arrays bit for
bit, never a pickle: an output folder on shared storage may be written by others)."""
from __future__ import annotations

import base64
import hashlib
import json
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Optional

import numpy as np

from ..files import atomic_write_text
from ..tracking import IouTracker, Track
from .chunks import ChunkResult, ChunkSpec

CHUNKS_DIR = ".emo-chunks"  # in a video's output folder: finished chunks, so that a rerun skips them
FORMAT = 1  # of a chunk file; another makes old chunk files be redone


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
