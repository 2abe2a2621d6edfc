"""`emo-train ensemble`: several trained checkpoints joined into one (their logits averaged)."""
from __future__ import annotations

from pathlib import Path

import torch

from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.preprocess import InputSpec

from .checkpoint import (file_sha256, half_weights, load_checkpoint, make_checkpoint, make_run_folder, model_from_checkpoint,
                         save_atomic)
from .data import val_split
from .evaluate import evaluate_split
from .models import Ensemble
from .runlog import write_logs


def load_members(checkpoints: list[Path]) -> tuple[list[dict], InputSpec]:
    """The member checkpoints and the input they all read; two or more, none an ensemble itself."""
    if len(checkpoints) < 2:
        raise EmoError("an ensemble needs at least two checkpoints")
    cks = [load_checkpoint(p) for p in checkpoints]
    spec = InputSpec.from_dict(cks[0]["input"])
    for p, ck in zip(checkpoints[1:], cks[1:]):
        if InputSpec.from_dict(ck["input"]) != spec:
            raise EmoError(f"{p} reads input {ck['input']}, {checkpoints[0]} reads {cks[0]['input']}; members must read the same input")
        if ck["arch"] == "ensemble":
            raise EmoError(f"{p} is already an ensemble; list its members instead")
    return cks, spec


def members_val_split(cks: list[dict], spec: InputSpec, data: str):
    """The val faces of ``data`` that the first member's run validated on (its seed and fraction)."""
    cfg = cks[0].get("config") or {}
    return val_split(data, spec.size, cfg.get("val_fraction", 0.1), int(cfg.get("seed", 0)))


def build_ensemble(checkpoints: list[Path], data: str, out: str = "runs", name: str = "", half: bool = False, flip: bool = False,
                   log=print) -> Path:
    """Load the member checkpoints, check they read the same input, validate each and the
    ensemble on ``data``'s val faces, and write OUT/NAME/model.pt; returns OUT/NAME."""
    cks, spec = load_members(checkpoints)
    run_dir = Path(out) / name
    if any(run_dir.resolve() == Path(p).resolve().parent for p in checkpoints):
        raise EmoError(f"--name {name} would write into the folder of a member checkpoint; pick another name")
    members = [{"arch": ck["arch"], "arch_args": ck["arch_args"]} for ck in cks]
    model = Ensemble(members, flip=flip)
    for sub, ck in zip(model.members, cks):
        sub.load_state_dict(model_from_checkpoint(ck).state_dict())
    if half:
        model.load_state_dict(half_weights(model.state_dict()))
    model.eval()
    val = members_val_split(cks, spec, data)
    device = torch.device("cpu")
    accs = []
    for p, sub in zip(checkpoints, model.members):
        accs.append(evaluate_split(sub, val, spec, device)[0]["accuracy"])
        log(f"member {p}: val accuracy {accs[-1] * 100:.2f}%")
    rep, _ = evaluate_split(model, val, spec, device)
    log(f"ensemble of {len(cks)}{' with mirrored faces' if flip else ''}{' (float16 weights)' if half else ''}: val accuracy {rep['accuracy'] * 100:.2f}% "
        f"({(rep['accuracy'] - max(accs)) * 100:+.2f} points over the best member; n={len(val.labels)})")
    best = {"val_accuracy": rep["accuracy"], "val_macro_f1": rep["macro_f1"], "member_val_accuracy": accs}
    record = [{"checkpoint": str(p), "sha256": file_sha256(p)} for p in checkpoints]
    ck = make_checkpoint(model, "ensemble", {"members": members, "flip": flip}, cks[0]["input"], {"name": name, "members": record},
                         cks[0].get("data") or {}, {"best": best, "history": []}, half=half, ensemble=record)
    make_run_folder(run_dir)
    save_atomic(ck, run_dir / "model.pt")
    write_logs(run_dir, [], best, rep, plots=True)
    log(f"wrote {run_dir / 'model.pt'}")
    return run_dir
