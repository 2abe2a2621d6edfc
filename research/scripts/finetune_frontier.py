#!/usr/bin/env python3
"""How much fine-tuning learns a user's faces against how much FER2013 it forgets (fp32, fast).

One `emo-train finetune` run (in-process, no export) on CK+-style faces split by subject, then
the fine-tuned weights blended with the base's (weight-space interpolation, alpha 0 = the base,
1 = the fine-tuned model), each blend judged on the subjects it never saw and on FER2013
PublicTest. Splits: ``--fold K`` of 4 over all subjects (about 40 train, 13 judged: close to a user
who gives every face they have), or ``--inner S`` (benchmarks/finetune.py's tuning split).
Appends one JSON line per run to ``--out``. Training install; data through EMO_SHARED_DATA.

    python research/scripts/finetune_frontier.py --fold 0 --set replay_alpha=0
    python research/scripts/finetune_frontier.py --fold 0 --gated --refit   # the pair, judged alone (no blends)
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import finetune as bench  # noqa: E402  (the subject split and folder helpers)

from emo.edge_runtime.dataset import load_folder, load_split  # noqa: E402
from emo.edge_runtime.preprocess import InputSpec, normalize  # noqa: E402
from emo.train.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from emo.train.evaluate import predict_logits  # noqa: E402
from emo.train.finetune import FinetuneRequest, finetune, resolve_base  # noqa: E402

ALPHAS = (0.0, 0.8, 1.0)


def accuracy(model, split, spec) -> float:
    logits = predict_logits(model, torch.from_numpy(normalize(split.images, spec)), torch.device("cpu"))
    return round(float((logits.argmax(1).numpy() == split.labels).mean()), 4)


def blend(base: torch.nn.Module, tuned: torch.nn.Module, a: float) -> torch.nn.Module:
    if a == 1.0:
        return tuned.eval()
    sb, st = base.state_dict(), tuned.state_dict()
    m = copy.deepcopy(tuned)
    m.load_state_dict({k: (a * st[k].float() + (1 - a) * sb[k].float()).to(st[k].dtype) if st[k].is_floating_point() else st[k]
                       for k in st})
    return m.eval()


def main() -> None:
    shared = Path(os.environ.get("EMO_SHARED_DATA", "../shared/data"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="default")
    ap.add_argument("--fold", type=int, default=None, help="fold K of 4 over all subjects")
    ap.add_argument("--inner", type=int, default=1, help="without --fold: the inner seed of the training half")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE for the fine-tuning recipe")
    ap.add_argument("--gated", action="store_true", help="emo-train finetune --gated (judged as it is: a pair is not blended)")
    ap.add_argument("--refit", action="store_true", help="emo-train finetune --refit")
    ap.add_argument("--out", type=Path, default=Path("research/results/finetune-frontier.jsonl"))
    ap.add_argument("--keep", type=Path, default=None,
                    help="keep the given faces (links) and the run here, for finetune_gate.py (KEEP/runs/r); default: a temporary folder")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = shared / "ckplus-dev"
    faces = load_folder(data, "all")
    subjects = sorted({bench.subject(n) for n in faces.names})
    if args.fold is not None:
        order = [subjects[i] for i in np.random.default_rng(0).permutation(len(subjects))]
        judged = set(order[args.fold::4])
        train = set(subjects) - judged
    else:
        train, judged = bench.halves(sorted(bench.halves(subjects, 0)[0]), args.inner)
    judge = bench.subset(faces, np.array([bench.subject(n) in judged for n in faces.names]))
    fer = load_split(shared / "fer2013", "val")
    overrides = {}
    for s in args.sets:
        k, v = s.split("=", 1)
        try:
            overrides[k] = json.loads(v)
        except ValueError:
            overrides[k] = v
    with tempfile.TemporaryDirectory(prefix="emo-frontier-") as scratch:
        tmp = str(args.keep or scratch)
        folder = bench.link_folder(Path(tmp) / "data", data, [n for n in faces.names if bench.subject(n) in train])
        t0 = time.time()
        res = finetune(FinetuneRequest(data=str(folder), base=args.base, replay=str(shared / "fer2013"), overrides=overrides,
                                       out=str(Path(tmp) / "runs"), name="r", gated=args.gated, refit=args.refit),
                       log=lambda *a: None,
                       live={"threads": 1, "progress": False})
        wall = time.time() - t0
        base_ck = load_checkpoint(resolve_base(args.base)[0])
        tuned = model_from_checkpoint(load_checkpoint(Path(res["checkpoint"]))).eval()
    base = model_from_checkpoint(base_ck).eval()
    spec = InputSpec(size=base_ck["input"]["size"], mean=base_ck["input"]["mean"], std=base_ck["input"]["std"])
    alphas = (1.0,) if args.gated else ALPHAS
    row = {"base": args.base, "gated": args.gated, "refit": args.refit, "split": f"fold {args.fold} of 4" if args.fold is not None else f"inner {args.inner}",
           "settings": args.sets, "wall_s": round(wall), "blends": [(a, accuracy(blend(base, tuned, a), judge, spec),
                                                                     accuracy(blend(base, tuned, a), fer, spec)) for a in alphas]}
    print(json.dumps(row))
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
