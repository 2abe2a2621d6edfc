"""``DIR/faces.csv``, the table `emo-edge collect` keeps beside its crops: one row per saved face.

Resume: the rows already there say which faces were saved (:meth:`FacesTable.has`), so a rerun
on the same source skips them, and which name stems belong to which source (:meth:`FacesTable.stem`).

Writing: the file is created atomically (header only, files.atomic_write_text); each row is then
appended with one ``write`` of a whole line and an fsync, after its crop was written (atomically).
A crash can thus leave a crop without a row (it is made again, under the same name, by a rerun)
or, at worst, a last line without its newline: that torn row is dropped when the table is next
opened. Only one collect writes into a DIR at a time (an exclusive lock on the folder).
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path
from typing import Optional

from .errors import EmoError
from .files import atomic_write_text, shown
from .frames import warn
from .labels import LABELS

CSV_NAME = "faces.csv"
COLUMNS: tuple[str, ...] = ("file", "group", "emotion", "source", "image", "frame", "time", "track",
                            "x", "y", "w", "h", *LABELS, "sharpness")

Key = tuple  # (source, image or frame, track): one face of one source, as a rerun meets it again


def row_key(source: str, image: str, frame: int, track: int) -> Key:
    """A photo is known by its file name (a folder may gain files, which moves the indices), a video
    frame by its index."""
    return (source, image, track) if image else (source, int(frame), int(track))


class FacesTable:
    """The CSV of one output folder, opened for appending (see the module docstring)."""

    def __init__(self, folder: Path):
        self.path = folder / CSV_NAME
        self._lock_fd = _lock(folder)
        self.keys: set = set()
        self.stems: dict[str, tuple[str, str]] = {}  # name stem -> (source, image) it was made for
        self.rows = 0
        try:
            self._load()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except BaseException:
            self.close()
            raise

    def _load(self) -> None:
        if not os.path.lexists(self.path):
            atomic_write_text(self.path, ",".join(COLUMNS) + "\n")
            return
        if not self.path.is_file():
            raise EmoError(f"{shown(self.path)} is not a file; give --out a folder of emo-edge collect's, or a new one")
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise EmoError(f"cannot read {shown(self.path)}: {getattr(e, 'strerror', None) or e}") from None
        head = text.split("\n", 1)[0].strip("\r")
        if head != ",".join(COLUMNS):
            raise EmoError(f"{shown(self.path)} is not a table of emo-edge collect's (its header is '{head[:60]}'); "
                           "give --out another folder")
        if not text.endswith("\n"):  # a crash in the middle of an append
            text = text[: text.rfind("\n") + 1]
            atomic_write_text(self.path, text)
            warn(f"{shown(self.path)}: dropped a torn last row (a crash while it was written); its face is collected again")
        for n, row in enumerate(csv.DictReader(io.StringIO(text)), 2):
            try:
                key = row_key(row["source"], row["image"], int(row["frame"]), int(row["track"]))
            except (TypeError, ValueError):
                raise EmoError(f"{shown(self.path)} line {n} is not a row of emo-edge collect's; "
                               "fix or remove it, or give --out another folder") from None
            self.keys.add(key)
            self.stems.setdefault(row["group"].rsplit("-t", 1)[0], (row["source"], row["image"]))
            self.rows += 1

    def has(self, key: Key) -> bool:
        return key in self.keys

    def stem(self, base: str, source: str, image: str) -> str:
        """``base``, or ``base`` with a short hash of the source when another source already has it
        (two clip.mp4 in two folders): one name stem, and so one group, per source."""
        owner = self.stems.setdefault(base, (source, image))
        if owner == (source, image):
            return base
        alt = f"{base}-{hashlib.sha1(f'{source}|{image}'.encode()).hexdigest()[:6]}"
        self.stems.setdefault(alt, (source, image))
        return alt

    def append(self, row: dict) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([row[c] for c in COLUMNS])
        data = buf.getvalue().encode("utf-8")
        try:
            if os.write(self._fd, data) != len(data):
                raise OSError(0, "short write")
            os.fsync(self._fd)
        except OSError as e:
            raise EmoError(f"cannot write {shown(self.path)}: {e.strerror or e}; free some space or write elsewhere") from None
        self.keys.add(row_key(row["source"], row["image"], row["frame"], row["track"]))
        self.rows += 1

    def close(self) -> None:
        for name in ("_fd", "_lock_fd"):
            fd: Optional[int] = getattr(self, name, None)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)


def _lock(folder: Path) -> Optional[int]:
    """An exclusive lock on ``folder`` for this process, or an EmoError when another collect holds it."""
    try:
        import fcntl
    except ImportError:  # not on Linux: no lock
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise EmoError(f"another emo-edge collect is writing into {shown(folder)}; wait for it or give another --out") from None
    return fd
