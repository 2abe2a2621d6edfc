"""`emo-train`: train a FER2013 model, fine-tune one on your own faces, or evaluate a checkpoint."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import List, Literal, Optional

import typer

from emo.edge_runtime.cliopts import root_callback
from emo.edge_runtime.errors import EmoError, cli_main

app = typer.Typer(add_completion=False, rich_markup_mode=None, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train small FER2013 emotion CNNs (PyTorch) and evaluate checkpoints.")
root_callback(app, "emo-train")


class _Stdout(logging.Handler):
    """A run's progress is its report: on stdout (the sys.stdout of the moment), one line a record."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), flush=True)


report = logging.getLogger("emo.train")  # INFO under the CLIs' logger `emo`: --quiet hides it, --verbose adds debug lines
report.addHandler(_Stdout())
report.propagate = False


def log(*parts) -> None:
    """How emo-train's commands report progress (epochs, data, teachers, gates): logger ``emo.train``."""
    report.info(" ".join(str(p) for p in parts))


@app.command()
def fit(
    data: Optional[str] = typer.Option(None, help="FER2013 root (ROOT/train/<emotion>/*.jpg, ROOT/val/...) or fer2013.csv[.gz]."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML recipe, e.g. configs/emonet.toml; --set overrides it."),
    set_: List[str] = typer.Option([], "--set", help="Any config key as KEY=VALUE (JSON values), e.g. --set epochs=5 --set arch=seed."),
    resume: Optional[str] = typer.Option(None, help="Continue a stopped run: runs/NAME or runs/NAME/last.pt."),
    out: Optional[str] = typer.Option(None, help="Folder for runs (default: runs)."),
    name: Optional[str] = typer.Option(None, help="Run name: the run is written to OUT/NAME/ (default: the recipe's file name)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch (0: default)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bars."),
) -> None:
    """Train a model; writes OUT/NAME/{model.pt,last.pt,metrics.json,log.csv,curves.png,confusion.png}.

    The recipe (epochs, learning rate, architecture, ...) comes from --config and --set; the
    options here say only where the data is, where the run goes and what the machine uses.
    """
    from .config import build_config, parse_sets
    from .trainer import Stop, train

    overrides = dict(data=data, out=out, name=name, device=device, threads=threads, progress=progress)
    overrides.update(parse_sets(set_))
    try:
        if resume:
            if config is not None:
                raise EmoError("--resume uses the run's saved config; drop --config")
            train(None, resume=resume, overrides={k: v for k, v in overrides.items() if v is not None}, log=log)
        else:
            train(build_config(config, overrides), log=log)
    except Stop:
        raise typer.Exit(130)


@app.command()
def evaluate(
    data: str = typer.Argument(..., help="FER2013 root, a labelled folder (<emotion>/*.jpg) or fer2013.csv."),
    legacy_data: Optional[str] = typer.Argument(None, hidden=True),  # the old form: evaluate CHECKPOINT DATA
    checkpoint: Optional[Path] = typer.Option(None, "--model", "-m", help="model.pt written by emo-train (required)."),
    split: Optional[Literal["train", "val", "test"]] = typer.Option(None, help="Split to evaluate: train, val (PublicTest) or test (PrivateTest); default val, or train with --fold."),
    tta: bool = typer.Option(False, "--tta", help="Also report horizontal-flip test-time averaging."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the report as JSON to this path."),
    fold: Optional[str] = typer.Option(None, help="A fold run only: evaluate one fold of its training faces, "
                                       "a number or 'held-out' (the fold it never trained on); implies --split train."),
) -> None:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix of a checkpoint.

    With --fold, on the training faces of one fold of a fold teacher, cut as its run cut them:
    `--fold held-out --tta` is how well its soft labels teach a held-out student.
    """
    import torch

    from emo.edge_runtime.dataset import load_split
    from emo.edge_runtime.metrics import format_report
    from emo.edge_runtime.preprocess import InputSpec

    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .evaluate import evaluate_split

    if legacy_data is not None:
        if checkpoint is not None:
            raise EmoError("give the checkpoint once: emo-train evaluate DATA --model model.pt")
        checkpoint, data = Path(data), legacy_data
    if checkpoint is None:
        raise EmoError("which checkpoint? emo-train evaluate DATA --model model.pt")
    ck = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ck)
    spec = InputSpec.from_dict(ck["input"])
    split = split or ("train" if fold is not None else "val")
    if fold is not None:
        if split != "train":
            raise EmoError(f"--fold picks training faces; drop --split {split} (or --fold)")
        from .data import fold_faces

        sp, which = fold_faces(ck, data, fold, str(checkpoint))
        where = f"{split}, {which}"
    else:
        sp = load_split(data, split, spec.size)
        where = split
    rep, _ = evaluate_split(model, sp, spec, torch.device("cpu"))
    result = {"checkpoint": str(checkpoint), "data": str(data), "split": split, "report": rep}
    if fold is not None:
        result["fold"] = which
    print(format_report(rep, f"{checkpoint} on {data} [{where}]"))
    if tta:
        rep_tta, _ = evaluate_split(model, sp, spec, torch.device("cpu"), tta=True)
        result["report_tta"] = rep_tta
        print(f"with flip TTA: accuracy {rep_tta['accuracy'] * 100:.2f}%")
    if json_out:
        json_out.write_text(json.dumps(result, indent=2))
        print(f"wrote {json_out}")


@app.command()
def recalibrate(
    checkpoint: Path = typer.Argument(..., help="model.pt written by emo-train."),
    data: str = typer.Option(..., help="FER2013 root or fer2013.csv: its train faces give the statistics, its val faces the check."),
    out: str = typer.Option("runs", help="Folder for runs."),
    name: Optional[str] = typer.Option(None, help="Output run name (default: the checkpoint's run name + '-bn')."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Also pass the mirror image of every face."),
    threads: int = typer.Option(0, help="CPU threads for torch (0: default)."),
    limit_per_class: Optional[int] = typer.Option(None, help="Use at most N images per class (quick experiments)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    half: bool = typer.Option(False, "--half", help="Store the weights in float16 (half the file; the accuracy printed is theirs)."),
) -> None:
    """Re-estimate a checkpoint's BatchNorm statistics on the un-augmented training faces.

    Training leaves statistics of augmented faces; this one pass (about a minute on 2 cores)
    matches them to the plain faces the model meets at test time. The weights do not change.
    Writes OUT/NAME/model.pt (export it with emo-export) and prints val accuracy before and after.
    """
    import torch

    from .recalibrate import recalibrate_checkpoint

    if threads:
        torch.set_num_threads(threads)
    recalibrate_checkpoint(checkpoint, data, out=out, name=name, flip=flip, limit_per_class=limit_per_class,
                           progress=progress, log=log, half=half)



@app.command()
def ensemble(
    checkpoints: List[Path] = typer.Argument(..., help="Two or more model.pt files (same input size, mean and std)."),
    data: str = typer.Option(..., help="FER2013 root or fer2013.csv: its val faces give the accuracy reported and recorded."),
    out: str = typer.Option("runs", help="Folder for runs."),
    name: str = typer.Option(..., help="Run name: writes OUT/NAME/model.pt."),
    half: bool = typer.Option(False, "--half", help="Store the weights in float16 (half the file; the accuracy printed is theirs)."),
    flip: bool = typer.Option(False, "--flip", help="Each member also sees the mirrored face (twice the compute; it can gain or lose a few tenths of a point: compare the accuracy printed)."),
) -> None:
    """Join trained models into one checkpoint whose output is the average of their logits.

    The result exports as one ONNX graph (emo-export OUT/NAME/model.pt): one onnxruntime call per
    batch of faces runs every member. Prints each member's val accuracy and the ensemble's.
    """
    from .ensemble import build_ensemble

    build_ensemble(checkpoints, data, out=out, name=name, half=half, flip=flip, log=log)


@app.command()
def harden(
    checkpoint: Path = typer.Argument(..., help="model.pt of a trained emonet (e.g. models/large/emonet-kd3-bn.pt, the default before hardening)."),
    data: str = typer.Option(..., help="FER2013 root or fer2013.csv: its training faces teach the twin stem and the gate, its val faces give the figures."),
    out: str = typer.Option("runs", help="Folder for runs."),
    name: str = typer.Option("", help="Run name: writes OUT/NAME/model.pt (default: the checkpoint's name, or its folder's for a model.pt, + -hardened)."),
    split: int = typer.Option(5, help="How many of the network's first blocks get a twin (emonet: 5 is up to the 12x12 stage, 15% more weights)."),
    epochs: int = typer.Option(5, help="Passes over the training faces (about 3-4 minutes each for the default on one core)."),
    lr: float = typer.Option(1e-3, help="Peak learning rate of the twin stem (cosine, 5% warm-up)."),
    batch_size: int = typer.Option(128, help="Faces per step."),
    spoil: float = typer.Option(0.7, help="Share of the twin's training faces spoiled; the rest it sees clean, and learns to read them as the original stem does (the gate sends it some clean faces too)."),
    seed: int = typer.Option(0, help="Seed of the permutation, the spoiling and the gate's faces."),
    hint: float = typer.Option(0.0, min=0.0, help="Weight of a feature hint: the twin's output on the spoiled face is pulled toward the original stem's on the clean face (mean squared error; 0: none)."),
    turn: float = typer.Option(0.0, min=0.0, max=1.0, help="Share of the twin's training faces turned (up to 15 degrees) while the teacher sees them upright: the twin learns to read a tilted head as an upright one (0: none; the gate's spoiled faces are turned as often)."),
    exposure: float = typer.Option(0.0, min=0.0, max=1.0, help="Share of the twin's training faces made darker or brighter (pixels x0.5-1.6, clipped) while the teacher sees them as they were (0: none)."),
    adapter: int = typer.Option(0, min=0, help="Channels of a branch of the spoiled path's own beside the block after the split, weighted by the gate (0: none; the bundled default: 64). More weights for spoiled faces at a fraction of a longer twin's size (docs/train.md)."),
    teacher: Optional[List[Path]] = typer.Option(None, help="A model.pt that teaches the twin in place of the base, on the clean face (repeat for several: their probabilities are averaged; an ensemble checkpoint works too)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch (0: default)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars."),
) -> None:
    """Make a model robust to what cameras do to faces, without changing its answers on clean ones.

    A twin of the network's first blocks learns to read faces spoiled as a camera would (blur,
    a small face, noise, JPEG, light), taught by the untouched model seeing the clean face; a
    quality gate, fitted on spoiled against clean faces, sends each face through the stem that
    suits it. Prints clean and degraded accuracy (emo-edge evaluate --degrade all's conditions) of
    the base, the twin and the result. Stopped (Ctrl-C)? Run the same command again.
    """
    import shlex

    import torch

    from .harden import harden as run_harden
    from .trainer import Stop

    if threads:
        torch.set_num_threads(threads)
    try:
        run_harden(checkpoint, data, out=out, name=name, split=split, epochs=epochs, lr=lr, batch_size=batch_size, spoil=spoil, seed=seed, hint=hint,
                   turn=turn, exposure=exposure, adapter=adapter,
                   teachers=teacher or (), progress=progress, log=log,
                   resume_hint=shlex.join(["emo-train", *sys.argv[1:]]))
    except Stop:
        raise typer.Exit(130)


@app.command()
def half(
    checkpoint: Path = typer.Argument(..., help="model.pt written by emo-train (float32)."),
    out: Path = typer.Argument(..., help="Where to write the float16 copy, e.g. models/large/NAME.pt."),
    data: str = typer.Option(..., help="FER2013 root or fer2013.csv: its val faces give the check."),
    min_agreement: float = typer.Option(0.995, help="Least share of val faces on which the copy must predict what the original predicts."),
    max_drop: float = typer.Option(0.2, help="Most val accuracy, in points, that the copy may lose."),
) -> None:
    """Store a checkpoint's weights in float16 (half the file), changing nothing else.

    For teachers and members kept in the repository. Both versions classify the val faces; the
    copy is written (atomically) only if it agrees with the original's top-1 on at least
    --min-agreement of them and loses at most --max-drop points of accuracy.
    """
    from .half import half_checkpoint

    half_checkpoint(checkpoint, out, data, min_agreement=min_agreement, max_drop=max_drop / 100, log=log)

@app.command()
def finetune(
    data: Path = typer.Argument(..., help="Your faces: DATA/<emotion>/*.png (or .jpg), any size, colour or gray, named "
                                "<group>_<anything> (the group: a person or session), as emo-edge collect writes them."),
    base: str = typer.Option("default", "--from", help="The model to start from: tiny, default, or a model.pt. "
                             "(large, an ensemble of three networks, is refused: fine-tune default instead.)"),
    replay: Optional[str] = typer.Option(None, help="FER2013 folder or CSV whose faces are replayed so the model does "
                                         "not forget (default: the base model's training data, when it is here; none: off)."),
    groups: Optional[Path] = typer.Option(None, help="CSV with columns file,group giving each face's group, instead of "
                                          "the file-name prefix before the first '_'."),
    val_fraction: Optional[float] = typer.Option(None, help="Share of the groups held out to validate on (default 0.2)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the split and the training (default 0)."),
    gated: bool = typer.Option(False, "--gated", help="Keep the base model whole beside a copy that learns your faces' "
                               "labels alone, and a gate that sends faces like yours to the copy and the rest to the base: "
                               "learns your faces more fully and forgets less, at twice the size and time per face. The "
                               "copy knows only the emotions DATA holds. Needs FER2013 (--replay)."),
    refit: bool = typer.Option(False, "--refit", help="After the validated run (whose figures are printed), train again "
                               "on all your faces, the validation groups too, and keep that model (OUT/NAME/validated holds "
                               "the first): more people learnt, twice the time."),
    export: bool = typer.Option(False, "--export", help="Then export fp32 and int8 ONNX (emo-export), calibrated on your "
                                "training faces and verified on your validation faces."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Recipe (default: configs/finetune.toml); --set overrides it."),
    set_: List[str] = typer.Option([], "--set", help="Any training setting as KEY=VALUE, e.g. --set max_steps=600 --set lr=0.0005."),
    out: str = typer.Option("runs", help="Folder for runs."),
    name: Optional[str] = typer.Option(None, help="Run name (default: finetune-<base>-<fingerprint of DATA>, so a "
                                       "rerun on the same faces continues the same run)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch (0: default)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Teach a trained model your own faces, without forgetting the rest.

    Splits DATA by group into training and validation faces (about --val-fraction of the groups,
    stratified by emotion where the groups allow, fixed by --seed), so frames of one person never
    sit on both sides. Your faces teach their labels; the base model, frozen, teaches the student
    its own answers on replayed FER2013 faces, so the emotions your faces lack keep working
    (with nothing to replay, it teaches on your faces instead, blended with their labels).
    Prints accuracy before and after on your validation faces and on FER2013 PublicTest (when at
    hand), and writes OUT/NAME/{model.pt,finetune.json}; with --export also model.onnx and
    model.int8.onnx, for `emo-edge infer SOURCE --model OUT/NAME/model.int8.onnx`.

    Stopped (Ctrl-C)? Run the same command again: it continues where it stopped.
    """
    import shlex

    from .config import parse_sets
    from .finetune import FinetuneRequest, finetune as run_finetune
    from .finetune_report import format_before_after
    from .trainer import Stop

    req = FinetuneRequest(data=str(data), base=base, replay=replay, groups=str(groups) if groups else "", val_fraction=val_fraction,
                          seed=seed, recipe=config, overrides=parse_sets(set_), out=out, name=name or "", gated=gated, refit=refit)
    again = "the same command again: " + shlex.join(["emo-train", *sys.argv[1:]])
    try:
        result = run_finetune(req, log=log, live={"threads": threads, "device": device, "progress": progress}, resume_hint=again)
    except Stop:
        raise typer.Exit(130)
    if export:
        code = export_finetuned(result, log)
        if code:
            print(format_before_after(result))
            raise typer.Exit(code)
    print(format_before_after(result))
    model = Path(result["run"]) / ("model.int8.onnx" if export else "model.pt")
    print(f"fine-tuned model: {model}" + (f"\nrun it: emo-edge infer SOURCE --model {model}" if export else
                                          f"\nexport it for emo-edge: emo-export {model} (or rerun with --export)"))


def export_finetuned(result: dict, log) -> int:
    """emo-export on the fine-tuned checkpoint (a separate process: emo.train never imports
    emo.export), calibrated on the user's training faces and verified on their validation faces
    (its default for a run split by group), with int8 gates that one face cannot fail; adds the
    int8 accuracy to ``result``. Returns its exit code."""
    import subprocess

    log(f"exporting: emo-export {result['checkpoint']} --one-face (the int8 gates tolerate one of your "
        f"{result['faces']['val']} validation faces)")
    r = subprocess.run([sys.executable, "-m", "emo.export.cli", result["checkpoint"], "--one-face"])
    report = Path(result["run"]) / "export-report.json"
    if report.is_file():
        rep = json.loads(report.read_text())
        if rep.get("checkpoint_sha256") and rep.get("accuracy_int8") is not None:
            result["int8"] = {"accuracy": rep["accuracy_int8"], "passed": rep["passed"], "files": rep["files"]}
    return r.returncode


def main() -> None:
    cli_main(app, "emo-train", "emo-train needs the training install: pip install 'emo-fer[train]'")


if __name__ == "__main__":
    main()
