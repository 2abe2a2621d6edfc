"""Outputs of `emo-edge infer`: the JSON Lines record, its writers (JSON Lines, a live terminal table)
and the annotated image. The annotated-media saver is in :mod:`emo.edge_runtime.saver`."""
from __future__ import annotations

import json
import sys
from typing import IO

import cv2
import numpy as np

from .errors import EmoError


def frame_record(source: str, frame_index: int, timestamp: float, faces: list, timing: dict, name: str = "") -> dict:
    """One JSON Lines object (schema documented in README.md)."""
    rec = {"source": source, "frame": frame_index, "timestamp": round(timestamp, 4)}
    if name:
        rec["file"] = name
    rec["faces"] = [f.to_dict() for f in faces]
    rec["timing_ms"] = {k.removesuffix("_ms"): round(v, 3) for k, v in timing.items()}
    return rec


class JsonLinesWriter:
    def __init__(self, stream: IO[str] = sys.stdout):
        self.stream = stream

    def write(self, result) -> None:
        try:
            self.stream.write(json.dumps(result.record, separators=(",", ":")) + "\n")
            self.stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:  # stdout redirected to a full disk, say
            raise EmoError(f"cannot write the JSON Lines output: {e.strerror or e}") from None

    def close(self) -> None:
        self.stream.flush()


class TableWriter:
    """A readable table per frame for a terminal; redraws in place for live sources."""

    def __init__(self, labels, live: bool, stream: IO[str] = sys.stdout):
        self.labels, self.live, self.stream = labels, live, stream

    def write(self, result) -> None:
        rec = result.record
        out = []
        if self.live:
            out.append("\x1b[H\x1b[J")
        head = f"{rec['source']}" + (f"  {rec['file']}" if rec.get("file") else "") + f"  frame {rec['frame']}"
        t = rec["timing_ms"]
        head += f"  ({sum(t.values()):.1f} ms: " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()) + ")"
        out.append(head)
        if not rec["faces"]:
            out.append("  no faces")
        else:
            out.append("  " + f"{'face':<6}{'track':<7}{'box':<22}{'top':<10}" + "".join(f"{n[:8]:>9}" for n in self.labels))
            for i, f in enumerate(rec["faces"]):
                box = ",".join(str(v) for v in f["box"])
                out.append("  " + f"{i:<6}{f['track']:<7}{box:<22}{f['emotion']:<10}" + "".join(f"{f['scores'][n]:>8.1f}%" for n in self.labels))
        self.stream.write("\n".join(out) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


COLORS = [(80, 80, 230), (60, 160, 60), (160, 60, 160), (40, 200, 240), (200, 120, 40), (240, 200, 40), (180, 180, 180)]


def annotate(image: np.ndarray, faces: list, labels) -> np.ndarray:
    """Draw boxes, the top emotion and a bar per emotion next to each face."""
    img = image.copy() if image.ndim == 3 and image.shape[2] == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    th = max(1, round(min(h, w) / 300))
    fs = max(0.35, min(h, w) / 900)
    for f in faces:
        x, y, bw, bh = f.box
        color = COLORS[labels.index(f.emotion) % len(COLORS)]
        cv2.rectangle(img, (x, y), (x + bw, y + bh), color, th)
        text = f"#{f.track} {f.emotion} {f.confidence:.0f}%"
        cv2.putText(img, text, (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, fs, color, th, cv2.LINE_AA)
        bar_w = max(40, bw // 2)
        row = max(8, int(14 * fs / 0.5))
        bx = x + bw + 6 if x + bw + 6 + bar_w + 60 < w else max(0, x - bar_w - 66)
        for i, name in enumerate(labels):
            yy = y + i * row
            v = f.scores[name] / 100
            cv2.rectangle(img, (bx, yy), (bx + int(bar_w * v), yy + row - 3), COLORS[i % len(COLORS)], -1)
            cv2.putText(img, f"{name[:3]} {f.scores[name]:.0f}", (bx + bar_w + 4, yy + row - 4), cv2.FONT_HERSHEY_SIMPLEX, fs * 0.8, (255, 255, 255), 1, cv2.LINE_AA)
    return img


