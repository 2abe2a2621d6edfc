"""Text outputs of `emo-edge infer`: sinks that write the JSON Lines record (schema: docs/infer.md)
as JSON Lines or as a live terminal table. The record is made by :func:`..pipeline.frame_record`,
the annotated image by :mod:`..draw`, the annotated-media saver is :mod:`.saver`."""
from __future__ import annotations

import json
import sys
from typing import IO

from ..errors import EmoError


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
