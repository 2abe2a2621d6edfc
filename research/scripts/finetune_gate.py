#!/usr/bin/env python3
"""A gated pair for fine-tuning without forgetting, judged in fp32: the base model and a plainly
fine-tuned copy side by side, their probabilities mixed by a gate that tells the user's faces
from FER2013's.

RUN is a `emo-train finetune` run of the copy (e.g. made by finetune_frontier.py with
``--set replay_alpha=0`` and kept); its config names the faces it was given, and every CK+ face
not among them is judged. The gate is a logistic regression (L2, LBFGS) fitted on the given faces
(1) against 4,000 FER2013 training faces (0), on FEATURES: ``pix`` (a 12x12 thumbnail and a 16-bin
histogram), ``copy`` (the copy's 128 pooled features) or ``both``. Prints accuracy on the unseen
subjects and on PublicTest for the gate, the copy and the base (research/results/finetune-frontier.md).

    python research/scripts/finetune_gate.py RUN --features both [--hard] [--l2 0.01]
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from emo.edge_runtime.dataset import load_folder, load_split
from emo.edge_runtime.preprocess import InputSpec, normalize
from emo.train.checkpoint import load_checkpoint, model_from_checkpoint
from emo.train.finetune import resolve_base


def image_stats(images: np.ndarray) -> np.ndarray:
    thumb = np.stack([cv2.resize(i, (12, 12), interpolation=cv2.INTER_AREA).ravel() for i in images]).astype(np.float32) / 255
    hist = np.stack([np.histogram(i, 16, (0, 256))[0] for i in images]).astype(np.float32) / images[0].size
    return np.concatenate([thumb, hist], 1)


@torch.no_grad()
def pooled(model, images: np.ndarray, spec: InputSpec) -> np.ndarray:
    return model.head[:2](model.features(torch.from_numpy(normalize(images, spec)))).numpy()


@torch.no_grad()
def probs(model, images: np.ndarray, spec: InputSpec) -> np.ndarray:
    return torch.softmax(model(torch.from_numpy(normalize(images, spec))), 1).numpy()


def main() -> None:
    shared = Path(os.environ.get("EMO_SHARED_DATA", "../shared/data"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="the fine-tuned copy's run folder (config.json, model.pt)")
    ap.add_argument("--base", default="default")
    ap.add_argument("--features", choices=("pix", "copy", "both"), default="both")
    ap.add_argument("--hard", action="store_true", help="route each face to one model (gate > 0.5) instead of mixing")
    ap.add_argument("--l2", type=float, default=1e-2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    given = load_folder(Path(json.loads((args.run / "config.json").read_text())["data"]), "all")
    every = load_folder(shared / "ckplus-dev", "all")
    names = {n.split("/")[-1] for n in given.names}
    keep = np.array([n.split("/")[-1] not in names for n in every.names])
    judged = (every.images[keep], every.labels[keep])
    base_ck = load_checkpoint(resolve_base(args.base)[0])
    spec = InputSpec(size=base_ck["input"]["size"], mean=base_ck["input"]["mean"], std=base_ck["input"]["std"])
    base = model_from_checkpoint(base_ck).eval()
    copy = model_from_checkpoint(load_checkpoint(args.run / "model.pt")).eval()
    fer_train = load_split(shared / "fer2013", "train")
    other = fer_train.images[np.random.default_rng(0).choice(len(fer_train.labels), 4000, replace=False)]

    def features(images: np.ndarray) -> np.ndarray:
        parts = []
        if args.features in ("pix", "both"):
            parts.append(image_stats(images))
        if args.features in ("copy", "both"):
            parts.append(pooled(copy, images, spec))
        return np.concatenate(parts, 1)

    x = np.concatenate([features(given.images), features(other)])
    y = torch.tensor(np.r_[np.ones(len(given.labels)), np.zeros(len(other))], dtype=torch.float32)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xn = torch.tensor((x - mu) / sd, dtype=torch.float32)
    w, b = torch.zeros(x.shape[1], requires_grad=True), torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)
    balance = torch.tensor(len(other) / len(given.labels))

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xn @ w + b, y, pos_weight=balance) + args.l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    fer_val = load_split(shared / "fer2013", "val")
    for what, (images, labels) in (("unseen subjects", judged), ("FER2013 PublicTest", (fer_val.images, fer_val.labels))):
        with torch.no_grad():
            g = torch.sigmoid(torch.tensor((features(images) - mu) / sd, dtype=torch.float32) @ w + b).numpy()
        if args.hard:
            g = (g > 0.5).astype(np.float32)
        pc, pb = probs(copy, images, spec), probs(base, images, spec)
        mixed = g[:, None] * pc + (1 - g[:, None]) * pb
        acc = lambda p: f"{float((p.argmax(1) == labels).mean()):.2%}"  # noqa: E731
        print(f"{what} (n={len(labels)}): gated {acc(mixed)} (mean gate {g.mean():.3f}), copy {acc(pc)}, base {acc(pb)}")


if __name__ == "__main__":
    main()
