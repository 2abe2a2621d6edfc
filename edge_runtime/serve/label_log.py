"""The log of `emo-edge label`'s moves: ``DIR/label-log.jsonl``, one JSON record per line.

Every move (:class:`Move`) is appended and fsynced before its rename (:func:`append`), so the log
names every move that may have happened. Reading it (:func:`read_log`) drops a last line cut off by
a crash, which no rename followed; any other line that is not a record is an error. An undo is a
record too, naming the move it undoes, so what is left to undo (:func:`not_undone`) survives a
restart, and what the folders should hold is the files with the moves replayed (:func:`replay`).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional

from ..errors import EmoError
from ..files import shown

LOG_NAME = "label-log.jsonl"


@dataclass(frozen=True)
class Move:
    """One logged rename: ``src`` and ``dst`` are ``<folder>/<file>`` inside DIR."""

    id: int
    op: str  # "move" or "undo"
    src: str
    dst: str
    time: str = ""
    undoes: Optional[int] = None  # for an undo: the id of the move it reverses

    def record(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def replay(moves: Iterable[Move], files: Iterable[str]) -> set[str]:
    """The files (``<folder>/<file>``) after ``moves`` are applied to ``files``: what the folders
    hold when every logged move happened and nothing else touched them."""
    out = set(files)
    for m in moves:
        if m.src in out:
            out.discard(m.src)
            out.add(m.dst)
    return out


def not_undone(moves: list[Move]) -> list[int]:
    """The ids of the moves no later undo reversed, oldest first: what undo can still take back."""
    done: list[int] = []
    for m in moves:
        if m.op == "move":
            done.append(m.id)
        elif m.undoes in done:
            done.remove(m.undoes)
    return done


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_log(path: Path) -> list[Move]:
    """The moves the log at ``path`` holds ([] when there is none). A last line cut off by a crash
    (never acted on: the rename comes after the fsync) is dropped from the file; any other line that
    is not a record is an error."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise EmoError(f"cannot read {shown(path)}: {e.strerror}") from None
    lines = data.split(b"\n")
    moves, keep = [], 0  # keep: bytes of the file that hold whole records
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            keep += len(raw) + (n < len(lines))
            continue
        try:
            rec = json.loads(raw)
            m = Move(int(rec["id"]), str(rec["op"]), str(rec["src"]), str(rec["dst"]), str(rec.get("time", "")),
                     int(rec["undoes"]) if rec.get("undoes") is not None else None)
            if m.op not in ("move", "undo"):
                raise ValueError(m.op)
        except (ValueError, KeyError, TypeError):
            if n == len(lines):  # the last line, cut off by a crash
                break
            raise EmoError(f"{shown(path)} line {n} is not a label record; fix it or move the log "
                           "away (undo then starts afresh)") from None
        moves.append(m)
        keep += len(raw) + (n < len(lines))
    if keep < len(data) or (data and not data.endswith(b"\n")):
        with open(path, "r+b") as fh:  # drop the torn tail; end on a newline
            fh.truncate(keep)
            if keep and data[keep - 1:keep] != b"\n":
                fh.seek(keep)
                fh.write(b"\n")
            fh.flush()
            os.fsync(fh.fileno())
    return moves


def append(path: Path, m: Move) -> None:
    """Append ``m``'s record to the log at ``path`` and fsync it (and its folder, when this creates
    the log); an OSError is the caller's to report."""
    new = not os.path.lexists(path)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(m.record(), separators=(",", ":")) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    if new:
        fsync_dir(path.parent)
