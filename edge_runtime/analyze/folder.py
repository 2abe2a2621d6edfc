"""A video's output folder: whether it holds a finished analysis (:func:`is_complete`, the resume
check), claiming it for a new one (:func:`claim`), and where the rows go as they come
(:func:`raw_path`)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

from ..errors import EmoError
from ..files import check_writable_dir, shown
from .options import SUMMARY


def raw_path(out: Path) -> Path:
    """Where the rows go as they come, before frames.csv is made from them (a run killed leaves
    it; the next run of the same folder removes it, see :func:`claim`)."""
    return out / f".emo-raw-{os.getpid()}.csv"


def _read_summary(out: Path) -> Optional[dict]:
    try:
        with open(out / SUMMARY, encoding="utf-8") as fh:
            doc = json.load(fh)
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return None


def is_complete(out: Path, params: dict, ident: dict) -> bool:
    """Whether ``out`` holds a finished analysis of this very file with these parameters."""
    doc = _read_summary(out)
    if doc is None or doc.get("parameters") != params or doc.get("video", {}).get("path") != ident["path"]:
        return False
    if any(doc["video"].get(k) != ident[k] for k in ("bytes", "mtime_ns")):
        return False
    try:
        return all(os.stat(out / n).st_size == size for n, size in doc.get("outputs", {}).items()) and bool(doc.get("outputs"))
    except OSError:
        return False


def claim(out: Path, ident: dict, force: bool) -> None:
    """Make ``out`` ready for a new analysis: refuse to replace another video's analysis unless
    forced; remove the old summary first, so a half-redone folder never looks complete."""
    check_writable_dir(out, "--out")
    doc = _read_summary(out)
    if doc is not None and not force and doc.get("video", {}).get("path") not in (None, ident["path"]):
        raise EmoError(f"{shown(out)} holds the analysis of another video ({doc['video']['path']}); use another --out, "
                       "or --force to replace it")
    try:
        os.unlink(out / SUMMARY)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise EmoError(f"cannot replace {shown(out / SUMMARY)}: {e.strerror}") from None
    for p in out.glob(".emo-*-*"):  # left by a run that was killed (-9, power cut): its process is gone
        m = re.match(r"\.emo-(?:raw|tmp)-(\d+)", p.name)
        if m and not _alive(int(m.group(1))):
            p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True
