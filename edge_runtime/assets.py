"""Files emo can download on request (`emo-edge fetch NAME`) into a per-user cache.

This is the only download emo ever does, and only when a user runs `emo-edge fetch`. A file is
pinned by SHA-256, streamed to a temporary name in the cache and renamed only once its checksum
matches, so nothing half-written or unverified is ever found in the cache.

The cache is ``$EMO_CACHE_DIR``, else ``$XDG_CACHE_HOME/emo``, else ``~/.cache/emo``.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import EmoError
from .files import atomic_output, shown


@dataclass(frozen=True)
class Asset:
    name: str
    file: str
    url: str
    sha256: str
    size: int
    what: str


ASSETS = {
    "yunet": Asset(
        "yunet", "face_detection_yunet_2023mar.onnx",
        "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/face_detection_yunet_2023mar.onnx",
        "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4", 232_589,
        "YuNet face detector (opencv_zoo, MIT licence): finds more faces than Haar, gives eye landmarks"),
}


def cache_dir() -> Path:
    if os.environ.get("EMO_CACHE_DIR"):
        return Path(os.environ["EMO_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "emo"


def asset(name: str) -> Asset:
    if name not in ASSETS:
        raise EmoError(f"emo cannot fetch '{name}'; it knows: {', '.join(ASSETS)}")
    return ASSETS[name]


def cached(name: str) -> Optional[Path]:
    """The asset's file in the cache, if it is there (put there by fetch, or by hand)."""
    p = cache_dir() / asset(name).file
    return p if p.is_file() else None


def fetch(name: str, url: Optional[str] = None, sha256: Optional[str] = None, timeout: float = 30.0) -> Path:
    """Download an asset into the cache, verified, atomically; returns its path."""
    a = asset(name)
    url, want = url or a.url, (sha256 or a.sha256).lower()
    dest = cache_dir() / a.file
    by_hand = f"download {a.url} yourself and put it at {shown(dest)}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EmoError(f"cannot create the cache folder {shown(dest.parent)} ({e.strerror}); set EMO_CACHE_DIR") from None
    with atomic_output(dest) as tmp:  # an error anywhere below removes the temporary file
        try:
            got = _download(url, tmp, timeout)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
            reason = str(getattr(e, "reason", None) or e).strip() or type(e).__name__
            raise EmoError(f"cannot download {url} ({reason[:100]}); offline? {by_hand}") from None
        if got != want:
            raise EmoError(f"{url} does not have the expected SHA-256 (got {got[:16]}..., want {want[:16]}...); "
                           f"nothing was saved. Try again later, or {by_hand}")
    return dest


def _download(url: str, tmp: Path, timeout: float) -> str:
    """Stream ``url`` into ``tmp``; the SHA-256 of what arrived (a cut connection raises)."""
    h, n = hashlib.sha256(), 0
    req = urllib.request.Request(url, headers={"User-Agent": "emo-edge fetch"})
    with urllib.request.urlopen(req, timeout=timeout) as r, open(tmp, "wb") as out:
        expected = int(r.headers.get("Content-Length") or -1)
        while True:
            chunk = r.read(65536)
            if not chunk:
                break
            h.update(chunk)
            out.write(chunk)
            n += len(chunk)
        if expected >= 0 and n != expected:
            raise ValueError(f"the connection was cut after {n} of {expected} bytes")
        out.flush()
        os.fsync(out.fileno())
    return h.hexdigest()
