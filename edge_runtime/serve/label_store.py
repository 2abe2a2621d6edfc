"""The folder `emo-edge label` sorts, and the moves made in it.

DIR holds one folder per emotion (:data:`~emo.edge_runtime.labels.LABELS`) and ``_discarded/``;
the folder a face is in is its label. A move is one :func:`os.replace` inside DIR. Before the
rename, its record is appended to ``DIR/label-log.jsonl`` and fsynced (:mod:`.label_log`), so at
any moment of a crash the log names every move that may have happened; the next start finishes a
move the log has but the folders do not (:meth:`LabelStore.finish_last`). An undo is a move back,
logged the same way with the id of the move it undoes, so the moves still to undo survive a restart.

Only a regular file (not a link) with an image suffix, directly inside one of these folders, can
be moved; the folders themselves must be real folders, not links out of DIR.
"""
from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path
from typing import Optional

from ..errors import EmoError
from ..files import IMAGE_EXTS, shown
from ..labels import LABELS
from .label_log import LOG_NAME, Move, append, fsync_dir, not_undone, read_log, replay  # noqa: F401 (Move, replay: imported from here too)

DISCARDED = "_discarded"
FOLDERS = (*LABELS, DISCARDED)
MAX_NAME = 255  # bytes of a file name on common file systems
MAX_FILES = 100_000  # names listed per folder


class Refused(Exception):
    """A move or undo that cannot be done; ``code`` is the HTTP status, the message one line."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def is_face_name(name: str) -> bool:
    """A name label may list: an image suffix, no path parts, not hidden, printable UTF-8."""
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name:
        return False
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return False
    return size <= MAX_NAME and name.isprintable() and os.path.splitext(name)[1].lower() in IMAGE_EXTS


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


class LabelStore:
    """DIR's emotion folders, its log, and the moves between them (thread-safe)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.log_path = self.root / LOG_NAME
        self.lock = threading.Lock()
        self._check_root()
        self.moves = read_log(self.log_path)
        self.done = not_undone(self.moves)  # ids of moves not undone, oldest first
        self.session_moves = 0

    # --- start-up ------------------------------------------------------------------------------
    def _check_root(self) -> None:
        r = self.root
        if not os.path.lexists(r):
            raise EmoError(f"{shown(r)} does not exist; give the folder `emo-edge collect` wrote (<emotion>/*.png)")
        if not _is_real_dir(r) and not r.is_dir():
            raise EmoError(f"{shown(r)} is not a folder; give the folder `emo-edge collect` wrote (<emotion>/*.png)")
        linked = [n for n in FOLDERS if os.path.islink(r / n)]
        if linked:
            raise EmoError(f"{shown(r / linked[0])} is a symbolic link; label moves files only within real folders of "
                           f"{shown(r)} (make it a real folder)")
        present = [n for n in LABELS if _is_real_dir(r / n)]
        if not present:
            raise EmoError(f"{shown(r)} has no emotion folders; expected {shown(r)}/<emotion>/*.png with emotions "
                           f"{', '.join(LABELS)} (as `emo-edge collect` writes them)")
        if not any(self.files(n) for n in FOLDERS):
            raise EmoError(f"{shown(r)} has emotion folders but no images in them ({', '.join(present)}); nothing to label")
        for d in [r, *(r / n for n in FOLDERS if _is_real_dir(r / n))]:
            if not os.access(d, os.W_OK | os.X_OK):
                raise EmoError(f"{shown(d)} is not writable; label moves files within {shown(r)}: "
                               "run it as the folder's owner or copy the folder")
        if os.path.lexists(self.log_path) and not (os.path.isfile(self.log_path) and not os.path.islink(self.log_path)):
            raise EmoError(f"{shown(self.log_path)} is not a regular file; move it away")


    def finish_last(self) -> Optional[str]:
        """Finish the last logged move if a crash came between its log line and its rename; what
        was done (a line for the user), or None when the folders already agree with the log."""
        if not self.moves:
            return None
        m = self.moves[-1]
        src, dst = self.root / m.src, self.root / m.dst
        if os.path.lexists(src) and not os.path.lexists(dst):
            try:
                os.replace(src, dst)
            except OSError as e:
                raise EmoError(f"cannot finish the last logged move {m.src} -> {m.dst}: {e.strerror}") from None
            return f"finished the move the last run logged but did not make: {m.src} -> {m.dst}"
        if not os.path.lexists(dst):
            return f"warning: {m.dst} (the last logged move) is not there; it was moved or deleted outside label"
        return None

    # --- reading -------------------------------------------------------------------------------
    def files(self, folder: str) -> list[str]:
        """The faces in one folder, sorted by name (symbolic links and other names left out)."""
        d = self.root / folder
        if folder not in FOLDERS or not _is_real_dir(d):
            return []
        out = []
        try:
            with os.scandir(d) as it:
                for e in it:
                    if len(out) >= MAX_FILES:
                        break
                    if is_face_name(e.name) and e.is_file(follow_symlinks=False):
                        out.append(e.name)
        except OSError:
            return []
        return sorted(out)

    def counts(self) -> dict:
        return {n: len(self.files(n)) for n in FOLDERS}

    def face_path(self, folder: str, name: str) -> Path:
        """The path of a face that exists in one of DIR's folders, or Refused (404)."""
        if folder not in FOLDERS or not is_face_name(name):
            raise Refused(404, f"no face {ascii(str(folder)[:40])}/{ascii(str(name)[:80])}")
        d, p = self.root / folder, self.root / folder / name
        try:
            ok = _is_real_dir(d) and stat.S_ISREG(os.lstat(p).st_mode)
        except OSError:
            ok = False
        if not ok:
            raise Refused(404, f"{folder}/{name} is not in {shown(self.root.name)} (moved already?)")
        return p

    def undoable(self) -> list[Move]:
        by_id = {m.id: m for m in self.moves}
        return [by_id[i] for i in self.done]

    # --- moving --------------------------------------------------------------------------------
    def move(self, folder: str, name: str, to: str) -> Move:
        """Move ``folder/name`` to the folder ``to`` (an emotion or ``_discarded``): logged, then renamed."""
        if to not in FOLDERS:
            raise Refused(400, f"'to' must be one of {', '.join(FOLDERS)}")
        with self.lock:
            src = self.face_path(folder, name)
            if to == folder:
                raise Refused(409, f"{folder}/{name} is in {to} already")
            return self._logged_rename("move", src, self._free_name(to, name))

    def undo(self) -> Move:
        """Move the last move not yet undone back (to its old name, or a free one beside it)."""
        with self.lock:
            if not self.done:
                raise Refused(409, "nothing to undo")
            last = next(m for m in reversed(self.moves) if m.id == self.done[-1])
            folder, name = last.dst.split("/", 1)
            src = self.face_path(folder, name)
            back_folder, back_name = last.src.split("/", 1)
            return self._logged_rename("undo", src, self._free_name(back_folder, back_name), undoes=last.id)

    def _free_name(self, folder: str, name: str) -> Path:
        """``folder/name``, or ``stem-2.ext``... when that is taken: a move never overwrites a face."""
        d = self.root / folder
        if not os.path.lexists(d):
            try:
                os.mkdir(d)
                fsync_dir(self.root)
            except OSError as e:
                raise Refused(500, f"cannot create {folder}/ in {shown(self.root.name)}: {e.strerror}") from None
        if not _is_real_dir(d):
            raise Refused(409, f"{folder} in {shown(self.root.name)} is not a real folder")
        stem, ext = os.path.splitext(name)
        for n in range(1, 10_000):
            p = d / (name if n == 1 else f"{stem}-{n}{ext}")
            if not os.path.lexists(p):
                return p
        raise Refused(409, f"{folder} has too many files named like {name}")

    def _record(self, op: str, src: str, dst: str, undoes: Optional[int] = None) -> Move:
        """Append a record to the log (fsynced) and to :attr:`moves`."""
        m = Move(self.moves[-1].id + 1 if self.moves else 1, op, src, dst,
                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), undoes)
        try:
            append(self.log_path, m)
        except OSError as e:
            raise Refused(500, f"cannot write {LOG_NAME}: {e.strerror}; nothing was moved") from None
        self.moves.append(m)
        return m

    def _logged_rename(self, op: str, src: Path, dst: Path, undoes: Optional[int] = None) -> Move:
        """Log, then rename. A rename that fails is logged as reversed at once (an undo of a move, a
        move back for an undo), so the log and the folders still agree."""
        rel = lambda p: f"{p.parent.name}/{p.name}"  # noqa: E731
        m = self._record(op, rel(src), rel(dst), undoes)
        try:
            os.replace(src, dst)
        except OSError as e:
            try:
                self._record("undo" if op == "move" else "move", m.dst, m.src, m.id if op == "move" else None)
            finally:
                self.done = not_undone(self.moves)
            raise Refused(500, f"cannot move {m.src}: {e.strerror}; nothing was moved") from None
        self.done = not_undone(self.moves)
        self.session_moves += 1
        for d in {src.parent, dst.parent}:  # make the rename itself durable
            try:
                fsync_dir(d)
            except OSError:
                pass
        return m
