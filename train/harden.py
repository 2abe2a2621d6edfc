"""`emo-train harden CKPT --data FER`: give a trained emonet a twin stem for spoiled faces and a
quality gate (the network: :mod:`emo.train.stems`).

Training touches the twin stem alone: each step takes a batch of training faces (mirrored and
turned up to 15 degrees at random), spoils each as a random camera would
(:func:`emo.edge_runtime.degrade.random_degrade`), and teaches the network-with-twin-stem on the
spoiled face what the untouched model says of the clean one (distillation at temperature 2, plus
the label). Then the gate is fitted on spoiled against clean training faces, and the whole is
measured on the val faces: clean and under the ten benchmark conditions, for the base, the twin
alone and the hardened model. Each epoch ends with ``last.pt``; Ctrl-C saves mid-epoch, and the
same command resumes (the permutation and each batch's randomness come from the seed, the epoch
and the batch)."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from emo.edge_runtime.dataset import Split, load_split
from emo.edge_runtime.degrade import CONDITIONS, degrade_images, random_degrade, rotate, scale_pixels, summarize
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.preprocess import InputSpec, normalize
from emo.edge_runtime.stopping import StopFlag

from .checkpoint import file_sha256, load_checkpoint, make_checkpoint, make_run_folder, model_from_checkpoint, save_atomic
from .config import TrainConfig
from .distill import frozen, teacher_probs
from .gated import _batched, fit_gate
from .models import build_model
from .optim import lr_factor, set_lr
from .run import Stop

KD_TEMPERATURE = 2.0
GATE_FACES = 8000  # spoiled and as many clean training faces the gate is fitted on (4000 left its clean figure 0.15 points to chance)


def hardened_from(base_ck: dict, split: int, adapter: int = 0) -> torch.nn.Module:
    """A dual-stem model around ``base_ck``'s network; its twin starts as a copy of the stem (and
    its adapter, if ``adapter`` channels are asked for, at zero)."""
    if base_ck["arch"] in ("ensemble", "gated", "dual-stem"):
        raise EmoError(f"emo-train harden takes a single emonet checkpoint, not a{'n' if base_ck['arch'][0] == 'e' else ''} "
                       f"{base_ck['arch']}; harden its members one by one")
    spec = InputSpec.from_dict(base_ck["input"])
    model = build_model("dual-stem", base={"arch": base_ck["arch"], "arch_args": base_ck["arch_args"]}, split=split,
                        size=spec.size, mean=spec.mean, std=spec.std, adapter=adapter)
    model.net.load_state_dict(model_from_checkpoint(base_ck).state_dict())
    model.twin.load_state_dict(model.net.features[:split].state_dict())
    return model


def _batch(images: np.ndarray, rng: np.random.Generator, spoil: float, turn: float = 0.0,
           exposure: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's faces (mirrored and turned at random) and the twin's: the same faces, a share
    ``spoil`` of them spoiled. A share ``turn`` of the twin's faces are turned (up to 15 degrees)
    while the teacher sees them upright, and a share ``exposure`` lit differently (pixels x0.5-1.6,
    clipped) while the teacher sees them as they were: the twin learns to read them as upright,
    well-lit faces."""
    out = images.copy()
    flip = rng.random(len(out)) < 0.5
    out[flip] = out[flip, :, ::-1]
    if not turn and not exposure:  # the recipe before --turn/--exposure, draw for draw (such runs resume)
        out = np.stack([_tilt(im, rng) if rng.random() < 0.5 else im for im in out])
        return out, np.stack([random_degrade(im, rng) if rng.random() < spoil else im for im in out])
    taught, seen = [], []
    for im in out:
        if rng.random() < turn:  # the teacher sees it upright, the twin turned
            taught.append(im)
            seen.append(_tilt(im, rng))
        else:  # both see it alike
            taught.append(_tilt(im, rng) if rng.random() < 0.5 else im)
            seen.append(taught[-1])
        seen[-1] = _camera(seen[-1], rng, spoil, exposure)
    return np.stack(taught), np.stack(seen)


def _tilt(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``img`` turned by a random angle of up to 15 degrees either way."""
    return rotate(img, float(rng.uniform(-15, 15)))


def _camera(img: np.ndarray, rng: np.random.Generator, spoil: float, exposure: float) -> np.ndarray:
    """``img`` lit differently (with probability ``exposure``), then spoiled (with probability ``spoil``)."""
    if rng.random() < exposure:
        img = scale_pixels(img, float(np.exp(rng.uniform(np.log(0.5), np.log(1.6)))))
    return random_degrade(img, rng) if rng.random() < spoil else img


def robustness(fn: Callable, images: np.ndarray, labels: np.ndarray, spec: InputSpec) -> dict:
    """Accuracy of ``fn`` (a batch of inputs -> logits) on clean faces and under each benchmark
    condition, with the mean and worst of the conditions."""
    acc = {}
    for name in ("clean", *CONDITIONS):
        faces = images if name == "clean" else degrade_images(images, name)
        acc[name] = float((_batched(fn, normalize(faces, spec)).argmax(1).numpy() == labels).mean())
    return {"clean": acc["clean"], **summarize(acc, CONDITIONS)}


def harden(checkpoint: Path, data: str, out: str = "runs", name: str = "", split: int = 5, epochs: int = 5, lr: float = 1e-3,
           batch_size: int = 128, kd_alpha: float = 0.7, spoil: float = 0.7, seed: int = 0, hint: float = 0.0,
           turn: float = 0.0, exposure: float = 0.0, adapter: int = 0,
           teachers: Sequence[Path] = (), progress: bool = True, log: Callable = print, resume_hint: str = "") -> Path:
    """Train the twin stem (resuming OUT/NAME/last.pt if there), fit the gate, measure, and write
    OUT/NAME/model.pt; returns OUT/NAME."""
    base_ck = load_checkpoint(checkpoint)
    model = hardened_from(base_ck, split, adapter)
    spec = InputSpec.from_dict(base_ck["input"])
    stem = Path(checkpoint).stem if Path(checkpoint).stem != "model" else Path(checkpoint).parent.name
    run_dir = Path(out) / (name or f"{stem}-hardened")
    make_run_folder(run_dir)
    train = load_split(data, "train", spec.size)
    val = load_split(data, "val", spec.size)
    recipe = {"base": str(checkpoint), "base_sha256": file_sha256(checkpoint), "data": str(data), "split": split, "epochs": epochs,
              "lr": lr, "batch_size": batch_size, "kd_alpha": kd_alpha, "spoil": spoil, "seed": seed}
    # recorded only when used, so runs from before these options resume
    recipe.update({k: v for k, v in (("hint", hint), ("turn", turn), ("exposure", exposure), ("adapter", adapter)) if v})
    if teachers:
        recipe["teachers"] = [{"path": str(t), "sha256": file_sha256(t)} for t in teachers]
    teacher_models = [_teacher(t, base_ck, checkpoint) for t in teachers]
    log(f"hardening {checkpoint}: a twin of its first {split} blocks{f' (and a {adapter}-channel branch beside block {split})' if adapter else ''} learns spoiled faces ({len(train.labels)} training faces "
        f"of {train.report.source}, {epochs} epochs); the rest of the network stays as it is")
    train_twin(model, train, spec, recipe, teacher_models, run_dir / "last.pt", progress, log, resume_hint)
    gate = fit_quality_gate(model, train, spec, seed, log, turn, exposure)
    log(f"measuring on {len(val.labels)} val faces of {val.report.source}, clean and under the ten conditions")
    figures = {"base": robustness(model.net, val.images, val.labels, spec),
               "twin": robustness(model.twin_logits, val.images, val.labels, spec),
               "hardened": robustness(model, val.images, val.labels, spec)}
    for who, f in figures.items():
        log(f"  {who:9s} clean {f['clean'] * 100:.2f}%  mean of the ten {f['mean'] * 100:.2f}%  worst {f['worst'] * 100:.2f}% "
            f"({f['worst_condition']})")
    args = {"base": {"arch": base_ck["arch"], "arch_args": base_ck["arch_args"]}, "split": split, "size": spec.size,
            "mean": spec.mean, "std": spec.std, **({"adapter": adapter} if adapter else {})}
    metrics = {"best": {"val_accuracy": figures["hardened"]["clean"]}, "robustness": figures}
    ck = make_checkpoint(model, "dual-stem", args, base_ck["input"], {**(base_ck.get("config") or {}), "harden": recipe},
                         base_ck.get("data") or {}, metrics, gate=gate)
    save_atomic(ck, run_dir / "model.pt")
    log(f"wrote {run_dir / 'model.pt'}; export it with emo-export {run_dir / 'model.pt'}")
    return run_dir


def _teacher(path: Path, base_ck: dict, base_path: Path) -> torch.nn.Module:
    """The frozen model of checkpoint ``path``, refused unless it reads the base's faces and names its emotions."""
    ck = load_checkpoint(path)
    if ck["labels"] != base_ck["labels"] or InputSpec.from_dict(ck["input"]) != InputSpec.from_dict(base_ck["input"]):
        raise EmoError(f"teacher {path} reads other faces or names other emotions than {base_path}; pass a teacher trained like it")
    return frozen(model_from_checkpoint(ck)).eval()


def train_twin(model: torch.nn.Module, train: Split, spec: InputSpec, recipe: dict, teachers: list[torch.nn.Module], last: Path,
               progress: bool, log: Callable, resume_hint: str) -> None:
    """The twin stem's epochs (continuing ``last`` when it holds this recipe's progress); ``teachers``
    (or, when there are none, the rest of the network, frozen) teach it. Ctrl-C saves progress to
    ``last`` and raises :class:`Stop`."""
    epochs, batch_size, seed = recipe["epochs"], recipe["batch_size"], recipe["seed"]
    steps_per_epoch = len(train.labels) // batch_size
    schedule = TrainConfig(schedule="cosine", warmup_epochs=0.05 * epochs)
    learner = model.trainable()
    opt = torch.optim.AdamW(learner.parameters(), lr=recipe["lr"], weight_decay=1e-4)
    state = _resume(model, opt, recipe, last, log)
    base = frozen(model.net).eval()  # the rest of the network stays as it is, BatchNorm statistics included
    teachers = teachers or [base]
    stem = model.net.features[: model.split]
    stop = StopFlag().install()
    from tqdm import tqdm

    try:
        while state["epoch"] < epochs:
            e = state["epoch"]
            perm = np.random.default_rng([seed, e]).permutation(len(train.labels))
            bar = tqdm(total=steps_per_epoch, initial=state["batch"], desc=f"epoch {e + 1}/{epochs}", unit="batch",
                       dynamic_ncols=True, file=sys.stderr, disable=not (progress and sys.stderr.isatty()))
            learner.train()
            t0, seen_loss = time.time(), []
            torch.manual_seed(seed * 1_000_003 + e)
            for b in range(state["batch"], steps_per_epoch):
                idx = perm[b * batch_size : (b + 1) * batch_size]
                clean, spoiled = _batch(train.images[idx], np.random.default_rng([seed, e, b]), recipe["spoil"],
                                        recipe.get("turn", 0.0), recipe.get("exposure", 0.0))
                x_clean = torch.from_numpy(normalize(clean, spec))
                target = teacher_probs(teachers, x_clean, KD_TEMPERATURE, amp=False)
                h = model.twin(torch.from_numpy(normalize(spoiled, spec)))
                y = model.rest(h, 1.0)
                kd = F.kl_div(F.log_softmax(y / KD_TEMPERATURE, 1), target, reduction="batchmean") * KD_TEMPERATURE ** 2
                loss = recipe["kd_alpha"] * kd + (1 - recipe["kd_alpha"]) * F.cross_entropy(y, torch.from_numpy(train.labels[idx]))
                if recipe.get("hint"):  # the twin's output on the spoiled face against the original stem's on the clean one
                    with torch.no_grad():
                        want = stem(x_clean)
                    loss = loss + recipe["hint"] * F.mse_loss(h, want)
                set_lr(opt, recipe["lr"] * lr_factor(schedule, state["step"], steps_per_epoch * epochs, steps_per_epoch))
                opt.zero_grad()
                loss.backward()
                opt.step()
                state["batch"], state["step"] = b + 1, state["step"] + 1
                seen_loss.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(seen_loss):.3f}")
                if stop.reason:
                    raise Stop(stop.reason)
            bar.close()
            state = {"epoch": e + 1, "batch": 0, "step": state["step"]}
            _save_progress(last, recipe, model, opt, state)
            log(f"epoch {e + 1}/{epochs}: loss {np.mean(seen_loss):.4f} | {time.time() - t0:.0f}s")
    except Stop as s:
        _save_progress(last, recipe, model, opt, state)
        log(f"stopped by {s}; progress saved to {last}. Continue with: {resume_hint or 'the same command again'}")
        raise
    finally:
        stop.restore()
    model.eval()


def _resume(model: torch.nn.Module, opt: torch.optim.Optimizer, recipe: dict, last: Path, log: Callable) -> dict:
    """The run state in ``last`` (the twin and the optimiser restored from it), or a fresh one."""
    if not last.is_file():
        return {"epoch": 0, "batch": 0, "step": 0}
    saved = torch.load(last, map_location="cpu", weights_only=True)
    if {"spoil": 1.0, **(saved.get("recipe") or {})} != recipe:  # runs from before --spoil spoiled every face
        raise EmoError(f"{last} is a run with another recipe ({saved.get('recipe')}); pass another --name, or delete {last.parent}")
    for key, part in model.trainable().items():  # the twin, and the adapter if any: what _save_progress saved
        part.load_state_dict(saved[key])
    opt.load_state_dict(saved["optimizer"])
    state, epochs = saved["state"], recipe["epochs"]
    log(f"resuming {last.parent} at epoch {state['epoch'] + 1}, batch {state['batch']}" if state["epoch"] < epochs else
        f"{last.parent} has trained its {epochs} epoch{'s' if epochs != 1 else ''}; fitting the gate and measuring again")
    return state


def _save_progress(last: Path, recipe: dict, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    save_atomic({"recipe": recipe, **{k: m.state_dict() for k, m in model.trainable().items()}, "optimizer": opt.state_dict(), "state": state}, last)


def fit_quality_gate(model: torch.nn.Module, train: Split, spec: InputSpec, seed: int, log: Callable, turn: float = 0.0,
                     exposure: float = 0.0) -> dict:
    """Fit the gate on ``GATE_FACES`` spoiled training faces against as many clean ones; returns
    how it routes them. With ``turn``/``exposure`` (what the twin learnt), that share of the
    spoiled faces is also turned or lit differently."""
    rng = np.random.default_rng([seed, 1 << 20])
    pick = rng.choice(len(train.labels), min(2 * GATE_FACES, len(train.labels)), replace=False)
    half = len(pick) // 2
    if turn or exposure:
        spoiled = np.stack([_camera(_tilt(im, rng) if rng.random() < turn else im, rng, 1.0, exposure) for im in train.images[pick[:half]]])
    else:  # draw for draw as before these options
        spoiled = np.stack([random_degrade(im, rng) for im in train.images[pick[:half]]])
    log(f"fitting the quality gate: {half} spoiled training faces against {len(pick) - half} clean ones")
    stats = fit_gate(model, normalize(spoiled, spec), normalize(train.images[pick[half:]], spec))
    gate = {"spoiled_to_twin": stats["mine_to_copy"], "clean_to_twin": stats["other_to_copy"], "faces": int(len(pick))}
    log(f"  the gate gives the twin stem {gate['spoiled_to_twin'] * 100:.1f}% of the weight on spoiled faces and "
        f"{gate['clean_to_twin'] * 100:.1f}% on clean ones")
    return gate
