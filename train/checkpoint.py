"""The checkpoint contract: a plain dict, ``torch.save``d atomically, loadable with
``torch.load(weights_only=True)``."""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch

from emo.edge_runtime import __version__
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.files import atomic_write_bytes
from emo.edge_runtime.labels import LABELS

from .models import build_model

FORMAT = "emo-checkpoint"
FORMAT_VERSION = 1


def _plain(obj):
    """Tuples -> lists recursively, so the dict holds only weights_only-safe types."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def make_checkpoint(model, arch: str, arch_args: dict, input_spec: dict, config: dict, data: dict, metrics: dict,
                    half: bool = False, **extra) -> dict:
    """The checkpoint dict of ``model``; with ``half``, its weights stored in float16."""
    ck = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "emo_version": __version__,
        "arch": arch,
        "arch_args": _plain(arch_args),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "labels": list(LABELS),
        "input": _plain(input_spec),
        "config": _plain(config),
        "data": _plain(data),
        "metrics": _plain(metrics),
    }
    if half:
        ck["state_dict"], ck["storage"] = half_weights(ck["state_dict"]), "float16"
    ck.update(extra)
    return ck


def half_weights(state_dict: dict) -> dict:
    """``state_dict`` with its floating-point tensors in float16 (for checkpoints kept small;
    loading casts them back to the model's float32)."""
    return {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}


def make_run_folder(run_dir: Path) -> None:
    """Create a run's folder, or say in one line why it cannot be written."""
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EmoError(f"cannot write run folder {run_dir}: {e.strerror}; pass --out to a writable folder") from None


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically (temporary file, fsync, rename): a killed run never
    leaves a half-written checkpoint."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load and check an emo checkpoint, or raise :class:`EmoError` saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise EmoError(f"checkpoint {path} does not exist; train one with `emo-train fit` or pass the path to model.pt")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for non-checkpoint files
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise EmoError(f"{path} is not a PyTorch checkpoint ({first}); pass a model.pt written by emo-train") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise EmoError(f"{path} is a PyTorch file but not an emo checkpoint (no format '{FORMAT}'); pass a model.pt written by emo-train")
    if ck.get("format_version", 0) > FORMAT_VERSION:
        raise EmoError(f"{path} has checkpoint format {ck.get('format_version')}, newer than this emo reads ({FORMAT_VERSION}); upgrade emo")
    missing = [k for k in ("arch", "arch_args", "state_dict", "input") if k not in ck]
    if missing:
        raise EmoError(f"{path} is an incomplete emo checkpoint (missing {missing})")
    return ck


def model_from_checkpoint(ck: dict) -> torch.nn.Module:
    model = build_model(ck["arch"], **ck["arch_args"])
    try:
        model.load_state_dict(ck["state_dict"])
    except RuntimeError as e:
        raise EmoError(f"checkpoint weights do not fit architecture '{ck['arch']}': {str(e).splitlines()[0]}") from None
    return model.eval()
