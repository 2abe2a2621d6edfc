"""`emo-train finetune DATA`: teach a trained model a user's own faces without forgetting FER2013.

DATA is a folder of ``<emotion>/`` face images (any size, colour or gray), as ``emo-edge collect``
writes them. The steps, each a function:

1. :func:`resolve_base`: the model to start from (``tiny``, ``default`` or a checkpoint).
2. :func:`finetune_config`: the trainer's settings: the recipe (``configs/finetune.toml``), the
   base's architecture, input and weights, DATA split into training and validation faces by
   group (a person or session never on both sides), and the FER2013 faces to replay.
3. :func:`train_or_resume`: the ordinary trainer (:mod:`emo.train.trainer`) runs it. Learning
   without forgetting: the user's faces teach their labels, and the frozen base model teaches
   the student its answers on replayed FER2013 faces, so the classes DATA lacks keep working
   (with nothing to replay, the base teaches on the user's faces, blended with their labels,
   and the command says so). A rerun of the same command continues a stopped run.
4. :func:`before_after`: the base and the fine-tuned model on the user's validation faces and on
   FER2013 PublicTest (when at hand), written to ``finetune.json`` and recorded in the checkpoint,
   with the base, a fingerprint of DATA and the classes seen (the export stamps them in the model).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from emo.edge_runtime.dataset import Split, has_split, load_split
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.files import atomic_write_text
from emo.edge_runtime.labels import LABELS
from emo.edge_runtime.preprocess import InputSpec

from .checkpoint import file_sha256, load_checkpoint, model_from_checkpoint, save_atomic
from .config import TrainConfig, build_config
from .data import group_splits, join_splits
from .evaluate import evaluate_split
from .finetune_report import report_lines
from .gated import gated_config, pair_up
from .trainer import RESUME_OVERRIDABLE, train

REPO = Path(__file__).resolve().parents[1]
BASES = {"tiny": REPO / "models" / "emo_tiny.pt", "default": REPO / "models" / "large" / "emonet-kd3-bn.pt"}
RECIPE = REPO / "configs" / "finetune.toml"
NO_REPLAY = ("none", "off", "no")
KD_WITHOUT_REPLAY = 0.5  # with no FER2013 faces to replay, the base teaches on the user's faces with this weight (unless --set kd_alpha)
EPOCHS_PER_RUN = 10  # DATA is repeated within an epoch so that a run validates (and saves) about this often
LARGE = ("--from large is an ensemble of three networks (the default and models/large/*.pt), and finetune teaches "
         "one network; use --from default (or tiny), or fine-tune each member (--from default, --from "
         "models/large/NAME.pt) and join the results with emo-train ensemble")


@dataclass
class FinetuneRequest:
    """What the user asked for; :func:`finetune_config` turns it into the trainer's settings."""

    data: str
    base: str = "default"  # tiny | default | a checkpoint path
    replay: Optional[str] = None  # FER2013 faces to replay; None: the base's recorded training data if it is here; "none": off
    groups: str = ""  # a CSV of file,group (default: the file-name prefix before the first '_')
    val_fraction: Optional[float] = None  # default: the recipe's
    seed: Optional[int] = None
    recipe: Optional[Path] = None  # default: configs/finetune.toml
    overrides: dict = field(default_factory=dict)  # --set KEY=VALUE
    out: str = "runs"
    name: str = ""  # default: finetune-<base>-<first 8 hex digits of DATA's fingerprint>[-gated]
    gated: bool = False  # the base and a plainly fine-tuned copy, mixed per face by a domain gate (train/gated.py)
    refit: bool = False  # after the validated run, train again on every face (validation groups too) and ship that


def resolve_base(base: str) -> tuple[Path, str]:
    """The base checkpoint and how to name it: ``tiny`` and ``default`` are the repository's
    models/emo_<name>.pt; ``large`` (an ensemble) is refused, saying what to use instead."""
    if base == "large":
        raise EmoError(LARGE)
    if base in BASES:
        if not BASES[base].is_file():
            raise EmoError(f"the {base} model's checkpoint {BASES[base]} is not here (it is in the emo repository, not "
                           "the wheel); run from a clone of emo or pass --from PATH to a model.pt")
        return BASES[base], base
    path = Path(base)
    if not path.is_file():
        raise EmoError(f"--from {base}: no such checkpoint; use tiny, default or the path to a model.pt written by emo-train")
    return path, str(path)


def replay_source(explicit: Optional[str], base_ck: dict) -> tuple[str, str]:
    """Which FER2013 data to replay ('' for none) and a line saying so."""
    if explicit is not None and explicit.strip().lower() in NO_REPLAY:
        return "", ("no FER2013 faces replayed (--replay none): the base model teaches the student on your faces only, "
                    "so the classes your faces lack may fade")
    if explicit:
        if not Path(explicit).exists():
            raise EmoError(f"--replay {explicit} does not exist; pass a FER2013 folder (ROOT/train/<emotion>/) or fer2013.csv, or --replay none")
        return explicit, f"replaying FER2013 faces of {explicit}"
    src = (base_ck.get("data") or {}).get("source", "")
    if src and Path(src).exists() and has_split(src, "train"):
        return src, f"replaying FER2013 faces of {src} (the base model's training data)"
    where = f" ({src} is not here)" if src else ""
    return "", (f"no FER2013 faces to replay{where}: the base model teaches the student on your faces only, so the "
                "classes your faces lack may fade; pass --replay PATH to a FER2013 folder or CSV to keep them")


def finetune_config(req: FinetuneRequest, base_path: Path, base_ck: dict, replay: str) -> TrainConfig:
    """The trainer's settings: the recipe and --set, then what the base, DATA and --replay fix."""
    recipe = req.recipe or RECIPE
    if not Path(recipe).is_file():
        raise EmoError(f"the fine-tuning recipe {recipe} is not here (configs/ is in the emo repository); pass --config PATH")
    overrides = {"val_fraction": req.val_fraction, "seed": req.seed, **req.overrides}
    cfg = build_config(Path(recipe), overrides)
    fixed = {"data": str(Path(req.data).resolve()), "arch": base_ck["arch"], "arch_args": base_ck["arch_args"],
             "input_size": base_ck["input"]["size"], "mean": base_ck["input"]["mean"], "std": base_ck["input"]["std"],
             "init_from": str(base_path.resolve()), "teachers": [str(base_path.resolve())], "val_by_group": True,
             "groups_csv": str(Path(req.groups).resolve()) if req.groups else "", "replay": str(Path(replay).resolve()) if replay else "",
             "out": req.out}
    clash = sorted(k for k in (*fixed, "name") if k in req.overrides)
    if clash:
        raise EmoError(f"--set {', '.join(clash)}: finetune sets these itself (from DATA, --from, --groups, --replay, --out and --name)")
    for k, v in fixed.items():
        setattr(cfg, k, v)
    if not replay and "kd_alpha" not in req.overrides:  # nothing replayed: the base teaches on the user's faces
        cfg.kd_alpha = max(cfg.kd_alpha, KD_WITHOUT_REPLAY)
    return cfg


def auto_repeat(cfg: TrainConfig, n_train: int) -> int:
    """How many passes over ``n_train`` faces make one epoch, so a run of ``max_steps`` validates
    and saves about ``EPOCHS_PER_RUN`` times (a few dozen faces would otherwise end an epoch every
    step or two)."""
    if not cfg.max_steps:
        return 1
    return max(1, round(cfg.max_steps * cfg.batch_size / EPOCHS_PER_RUN / max(1, n_train)))


def run_name(base_label: str, fingerprint: str) -> str:
    stem = Path(base_label).parent.name if Path(base_label).name == "model.pt" else Path(base_label).stem
    return f"finetune-{stem.replace('emo_', '')}-{fingerprint[:8]}"


def train_or_resume(cfg: TrainConfig, fingerprint: str, log: Callable, resume_hint: str, live: dict) -> Path:
    """Start the run, or continue it when OUT/NAME holds a stopped (or finished) run of the same
    settings on the same data; other settings or changed data are refused in one line."""
    run_dir = Path(cfg.out) / cfg.name
    last = run_dir / "last.pt"
    if not last.is_file():
        return train(cfg, log=log, resume_hint=resume_hint)
    saved = load_checkpoint(last)
    if (saved.get("data") or {}).get("groups", {}).get("fingerprint") != fingerprint:
        raise EmoError(f"{run_dir} was fine-tuned on other faces than DATA holds now; pass --name NEW for a new run "
                       f"(or remove {run_dir})")
    want, had = asdict(cfg), dict(saved.get("config") or {})
    changed = sorted(k for k in want if k not in (*RESUME_OVERRIDABLE, "name", "out") and want[k] != had.get(k))
    if changed:
        raise EmoError(f"{run_dir} holds a fine-tune with other settings ({', '.join(changed)}); rerun with its settings to "
                       f"continue it, or pass --name NEW for a new run")
    return train(None, resume=str(run_dir), overrides={k: v for k, v in live.items() if v is not None}, log=log,
                 resume_hint=resume_hint)


def evaluate_pair(base: torch.nn.Module, tuned: torch.nn.Module, split: Split, spec: InputSpec) -> dict:
    """Accuracy (and recall per class) of the base and the fine-tuned model on ``split``."""
    out = {"n": int(len(split.labels))}
    for key, model in (("before", base), ("after", tuned)):
        rep, _ = evaluate_split(model, split, spec, torch.device("cpu"))
        out[key] = {"accuracy": rep["accuracy"], "recall": {c: v["recall"] for c, v in rep["per_class"].items() if v["support"]}}
    return out


def before_after(base_ck: dict, tuned_ck: dict, val: Split, pt: Optional[Split], seen: list[str]) -> dict:
    """The base and the fine-tuned model on the user's validation faces and, with ``pt``, on
    FER2013 PublicTest: overall, and the mean recall of the classes DATA lacks."""
    spec = InputSpec.from_dict(base_ck["input"])
    base, tuned = model_from_checkpoint(base_ck), model_from_checkpoint(tuned_ck)
    out = {"user_val": evaluate_pair(base, tuned, val, spec)}
    if pt is not None:
        res = evaluate_pair(base, tuned, pt, spec)
        res["source"] = pt.report.source
        missing = [c for c in LABELS if c not in seen]
        if missing:
            for key in ("before", "after"):
                res[key]["missing_classes_recall"] = round(float(np.mean([res[key]["recall"].get(c, 0.0) for c in missing])), 4)
        out["fer2013_publictest"] = res
    return out


def finetune(req: FinetuneRequest, log: Callable = print, live: Optional[dict] = None, resume_hint: str = "") -> dict:
    """Fine-tune, evaluate before and after, and record it in the checkpoint; returns the result
    (also written to OUT/NAME/finetune.json). ``live``: threads, device, progress (may change on a rerun)."""
    base_path, base_label = resolve_base(req.base)
    base_ck = load_checkpoint(base_path)
    if base_ck["arch"] == "ensemble":
        raise EmoError(f"--from {req.base} is an ensemble; " + LARGE.split("; ", 1)[1])
    if base_ck["arch"] == "gated":
        raise EmoError(f"--from {req.base} is already a gated pair; fine-tune its base model instead (--from default, tiny or that model.pt)")
    replay, replay_line = replay_source(req.replay, base_ck)
    cfg = finetune_config(req, base_path, base_ck, replay)
    if req.gated:
        replay_line = gated_config(cfg, base_ck, replay, req.overrides)
    train_split, val_split, record = group_splits(cfg.data, cfg.input_size, cfg.val_fraction, cfg.seed, cfg.groups_csv)
    for line in report_lines(record):
        log(line)
    if "repeat" not in req.overrides:
        cfg.repeat = auto_repeat(cfg, len(train_split.labels))
    cfg.name = req.name or run_name(base_label, record["fingerprint"]) + ("-gated" if req.gated else "")
    for k, v in (live or {}).items():
        if v is not None:
            setattr(cfg, k, v)
    log(f"fine-tuning {base_label} ({base_path}) on {len(train_split.labels)} faces of {record['groups']['train']} groups; "
        f"validating on {len(val_split.labels)} faces of {record['groups']['val']} groups")
    log(replay_line)

    def tuned(c: TrainConfig, mine: np.ndarray) -> tuple[Path, dict]:
        run_dir = train_or_resume(c, record["fingerprint"], log, resume_hint, live or {})
        ck = load_checkpoint(run_dir / "model.pt")
        return run_dir, (pair_up(run_dir, base_ck, ck, mine, replay, c.seed, log) if req.gated else ck)

    checked = replace(cfg, out=str(Path(cfg.out) / cfg.name), name="validated") if req.refit else cfg
    run_dir, tuned_ck = tuned(checked, train_split.images)
    result = {"base": base_label, "base_checkpoint": str(base_path), "base_sha256": file_sha256(base_path),
              "data": str(Path(req.data).resolve()), "data_fingerprint": record["fingerprint"],
              "classes_seen": record["classes_seen"], "faces": {"train": int(len(train_split.labels)), "val": int(len(val_split.labels))},
              "groups": {k: record["groups"][k] for k in ("train", "val")}, "replay": cfg.replay or None}
    pt = publictest(replay or _fer_at_hand(base_ck), cfg.input_size, log)
    result["figures"] = before_after(base_ck, tuned_ck, val_split, pt, record["classes_seen"])
    if req.refit:
        every = join_splits(train_split, val_split)
        n = len(every.labels)
        log(f"refitting on all {n} of your faces, the validation groups too (the figures are the validated run's, {run_dir})")
        refit = replace(cfg, train_on_val=True)
        if "repeat" not in req.overrides:
            refit.repeat = auto_repeat(refit, n)
        result["refit"] = {"faces": n, "validated_run": str(run_dir)}
        run_dir, tuned_ck = tuned(refit, every.images)
        result["refit"]["fer2013_publictest"] = None if pt is None else evaluate_split(
            model_from_checkpoint(tuned_ck), pt, InputSpec.from_dict(tuned_ck["input"]), torch.device("cpu"))[0]["accuracy"]
    result.update({"run": str(run_dir), "checkpoint": str(run_dir / "model.pt")})
    tuned_ck["finetune"] = {k: result[k] for k in ("base", "base_sha256", "data_fingerprint", "classes_seen", "faces", "groups")}
    tuned_ck["finetune"]["refit"] = bool(req.refit)
    if req.gated:
        result["gate"] = tuned_ck["finetune"]["gate"] = tuned_ck["gate"]
    save_atomic(tuned_ck, run_dir / "model.pt")
    atomic_write_text(run_dir / "finetune.json", json.dumps(result, indent=2))
    return result


def publictest(fer: str, size: int, log: Callable) -> Optional[Split]:
    """FER2013 PublicTest of ``fer``, loaded once for every figure on it; None when it is not there."""
    if not (fer and has_split(fer, "val")):
        return None
    log(f"evaluating on FER2013 PublicTest ({fer})")
    return load_split(fer, "val", size)


def _fer_at_hand(base_ck: dict) -> str:
    """FER2013 for the PublicTest figures when nothing is replayed: the base's recorded data, if here."""
    src = (base_ck.get("data") or {}).get("source", "")
    return src if src and Path(src).exists() else ""
