"""Keep a checkpoint in float16: half the file, for teachers and members kept in the repository.

Unlike ``emo-train recalibrate --half``, nothing but the rounding changes: the BatchNorm statistics
stay those of training (a fold teacher's were taken without its held-out faces, and must stay so).
The float16 copy is written only if it predicts what the float32 original predicts.
"""
from __future__ import annotations

from pathlib import Path

import torch

from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.preprocess import InputSpec, normalize

from .checkpoint import file_sha256, half_weights, load_checkpoint, model_from_checkpoint, save_atomic
from .data import val_split
from .evaluate import predict_logits


def half_checkpoint(checkpoint: str | Path, out: str | Path, data: str, min_agreement: float = 0.995,
                    max_drop: float = 0.002, log=print) -> dict:
    """Write ``checkpoint`` with float16 weights to ``out`` after comparing both on the val faces
    of ``data``: the copy must agree with the original's top-1 on at least ``min_agreement`` of
    them and lose at most ``max_drop`` accuracy. Returns the comparison; raises EmoError (and
    writes nothing) when the copy falls short."""
    checkpoint, out = Path(checkpoint), Path(out)
    if out.resolve() == checkpoint.resolve():
        raise EmoError(f"{out} is the checkpoint itself; write the float16 copy to another path")
    ck = load_checkpoint(checkpoint)
    if ck.get("storage") == "float16":
        raise EmoError(f"{checkpoint} is already stored in float16")
    model = model_from_checkpoint(ck)
    spec = InputSpec.from_dict(ck["input"])
    cfg = ck.get("config") or {}
    val = val_split(data, spec.size, cfg.get("val_fraction", 0.1), int(cfg.get("seed", 0)))
    x, y = torch.from_numpy(normalize(val.images, spec)), torch.from_numpy(val.labels)
    cpu = torch.device("cpu")
    full = predict_logits(model, x, cpu)
    model.load_state_dict(half_weights(model.state_dict()))
    half = predict_logits(model, x, cpu)
    result = {
        "source": str(checkpoint), "source_sha256": file_sha256(checkpoint), "faces": len(y),
        "val_accuracy_float32": float((full.argmax(1) == y).float().mean()),
        "val_accuracy_float16": float((half.argmax(1) == y).float().mean()),
        "top1_agreement": float((full.argmax(1) == half.argmax(1)).float().mean()),
        "max_probability_change": float((full.softmax(1) - half.softmax(1)).abs().max()),
    }
    log(f"val faces: {len(y)}; accuracy float32 {result['val_accuracy_float32'] * 100:.2f}%, "
        f"float16 {result['val_accuracy_float16'] * 100:.2f}%; same top-1 on {result['top1_agreement'] * 100:.2f}%; "
        f"largest probability change {result['max_probability_change']:.4f}")
    drop = result["val_accuracy_float32"] - result["val_accuracy_float16"]
    if result["top1_agreement"] < min_agreement or drop > max_drop:
        raise EmoError(f"the float16 copy of {checkpoint} does not keep its predictions (same top-1 on "
                       f"{result['top1_agreement'] * 100:.2f}%, accuracy {-drop * 100:+.2f} points); {out} was not written. "
                       "Keep the float32 file")
    new = dict(ck, state_dict=half_weights(ck["state_dict"]), storage="float16", half=result)
    save_atomic(new, out)
    log(f"wrote {out} ({out.stat().st_size:,} bytes, from {checkpoint.stat().st_size:,})")
    return result
