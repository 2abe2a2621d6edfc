#!/usr/bin/env python3
"""Which members for an ensemble, and how much of a subset's lead is luck.

    python research/scripts/ensemble_subsets.py D=models/large/emonet-kd3-bn.pt W=models/large/emonet-wkd-bn.pt \
        K=models/large/emonet-dkd-bn.pt V=runs/vgg-kd-bn/model.pt --data ../shared/data/fer2013 --baseline D+W+K

Scores every subset of two or more of the given checkpoints on the validation faces (PublicTest)
as `emo-train ensemble` would join them (logits averaged), and with --flip also with mirrored
faces (`emo-train ensemble --flip`). The best of many subsets on one test set is partly chance.
The split-half check measures how much: choose the best subset on a random half of the faces,
score that choice on the other half, many times over. Compare its mean with the fixed --baseline
scored on the same held-out halves. If choosing does not beat the fixed choice out of sample, the
full-set lead of the winner is selection luck and not a better model.

Needs the training install (pip install -e '.[train]'): it runs the PyTorch checkpoints.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

from emo.edge_runtime.errors import EmoError


def member_logits(paths: dict[str, Path], data: str, threads: int = 1):
    """Per label: (logits, logits of the mirrored faces) on the val faces `emo-train ensemble`
    scores; and their labels."""
    import torch

    from emo.edge_runtime.preprocess import normalize
    from emo.train.checkpoint import model_from_checkpoint
    from emo.train.ensemble import load_members, members_val_split
    from emo.train.evaluate import predict_logits

    torch.set_num_threads(threads)
    cks, spec = load_members(list(paths.values()))
    val = members_val_split(cks, spec, data)
    x = torch.from_numpy(normalize(val.images, spec))
    cpu = torch.device("cpu")
    out = {}
    for k, ck in zip(paths, cks):
        m = model_from_checkpoint(ck)
        out[k] = (predict_logits(m, x, cpu), predict_logits(m, torch.flip(x, dims=[3]), cpu))
    return out, torch.from_numpy(val.labels)


def subsets(logits: dict, labels, flip: bool) -> dict:
    """Per subset name ("A+B", "A+B flip"): a bool tensor, which faces it classifies correctly."""
    names = list(logits)
    res = {}
    for n in range(2, len(names) + 1):
        for combo in itertools.combinations(names, n):
            key = "+".join(combo)
            res[key] = sum(logits[c][0] for c in combo).argmax(1) == labels
            if flip:
                res[key + " flip"] = sum(logits[c][0] + logits[c][1] for c in combo).argmax(1) == labels
    return res


def split_half(correct: dict, baseline: str, splits: int, seed: int) -> dict:
    """Choose on one random half, score on the other, ``splits`` times; the same for ``baseline``."""
    import torch

    keys = list(correct)
    c = torch.stack([correct[k] for k in keys]).float()
    b = keys.index(baseline)
    g = torch.Generator().manual_seed(seed)
    n = c.shape[1]
    chosen, fixed, picks = [], [], {}
    for _ in range(splits):
        perm = torch.randperm(n, generator=g)
        a, h = perm[: n // 2], perm[n // 2:]
        i = int(c[:, a].mean(1).argmax())
        picks[keys[i]] = picks.get(keys[i], 0) + 1
        chosen.append(float(c[i, h].mean()))
        fixed.append(float(c[b, h].mean()))
    diff = torch.tensor(chosen) - torch.tensor(fixed)
    return {"splits": splits, "chosen_heldout_accuracy": sum(chosen) / splits, "baseline_heldout_accuracy": sum(fixed) / splits,
            "chosen_minus_baseline": float(diff.mean()), "chosen_beats_baseline_fraction": float((diff > 0).float().mean()),
            "picks": dict(sorted(picks.items(), key=lambda kv: -kv[1]))}


def parse_members(items: list[str]) -> dict[str, Path]:
    out = {}
    for it in items:
        label, _, path = it.partition("=") if "=" in it else (Path(it).parent.name or it, "", it)
        if not Path(path).is_file():
            raise SystemExit(f"error: checkpoint {path} not found; give LABEL=PATH to a model.pt")
        if label in out or "+" in label or " " in label:
            raise SystemExit(f"error: label {label!r} is repeated or holds '+' or a space; give each checkpoint a short LABEL=")
        out[label] = Path(path)
    if len(out) < 2:
        raise SystemExit("error: give at least two checkpoints")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="LABEL=PATH (or PATH: labelled by its folder) of emo-train checkpoints")
    ap.add_argument("--data", required=True, help="FER2013 root or fer2013.csv: its val faces (PublicTest) are scored")
    ap.add_argument("--baseline", help="the subset planned before measuring, e.g. A+B+C (default: all of them)")
    ap.add_argument("--flip", action="store_true", help="also score each subset with mirrored faces (emo-train ensemble --flip)")
    ap.add_argument("--splits", type=int, default=4000, help="random halvings for the split-half check (default 4000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--top", type=int, default=10, help="subsets listed (default 10)")
    ap.add_argument("--json", type=Path, help="write the full result here")
    args = ap.parse_args(argv)
    paths = parse_members(args.checkpoints)
    baseline = args.baseline or "+".join(paths)
    if any(part not in paths for part in baseline.removesuffix(" flip").split("+")):
        raise SystemExit(f"error: --baseline {baseline} names a label that is not given ({', '.join(paths)})")
    baseline = "+".join(p for p in paths if p in baseline.removesuffix(" flip").split("+")) + (" flip" if baseline.endswith(" flip") else "")
    try:
        logits, labels = member_logits(paths, args.data, args.threads)
    except EmoError as e:
        raise SystemExit(f"error: {e}") from None
    n = len(labels)
    singles = {k: float((v[0].argmax(1) == labels).float().mean()) for k, v in logits.items()}
    correct = subsets(logits, labels, args.flip)
    if baseline not in correct:
        raise SystemExit(f"error: --baseline {baseline} is not a subset scored here (two or more members; ' flip' needs --flip)")
    acc = {k: float(v.float().mean()) for k, v in correct.items()}
    check = split_half(correct, baseline, args.splits, args.seed)
    for k, a in singles.items():
        print(f"member {k} ({paths[k]}): {a * 100:.2f}%")
    print(f"{len(acc)} subsets scored on {n} faces; best {args.top}:")
    for k, a in sorted(acc.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {k:<24} {a * 100:.2f}%{'   <- baseline' if k == baseline else ''}")
    print(f"baseline {baseline}: {acc[baseline] * 100:.2f}% on all faces")
    print(f"split-half check ({args.splits} halvings): the subset chosen on one half scores "
          f"{check['chosen_heldout_accuracy'] * 100:.2f}% on the other, the baseline {check['baseline_heldout_accuracy'] * 100:.2f}% "
          f"({check['chosen_minus_baseline'] * 100:+.2f} points; chosen ahead in {check['chosen_beats_baseline_fraction'] * 100:.0f}% of halvings)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"n": n, "members": {k: str(p) for k, p in paths.items()}, "member_accuracy": singles,
                                         "baseline": baseline, "accuracy": acc, "split_half": check}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
