"""`emo-export model.pt`: fp32 + static int8 ONNX, verified against the PyTorch original."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, Optional

import typer

from emo.edge_runtime.cliopts import QUIET, VERBOSE, log, setup_logging, version_option
from emo.edge_runtime.errors import cli_main

from .options import ExportOptions, Gates

app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="Export an emo checkpoint to fp32 and int8 ONNX, verified on real faces.")


D, G = ExportOptions, Gates  # the defaults live in options.py; the help shows them


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="model.pt written by emo-train."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", "-o", help="Output folder (default: the checkpoint's folder)."),
    name: Optional[str] = typer.Option(None, help="Base file name (default: the checkpoint's stem, e.g. model)."),
    calib_data: Optional[str] = typer.Option(None, help="Real faces for calibration (their train split): FER2013 folder or CSV (default: the checkpoint's training data; for emo-train finetune's model, the faces it trained on)."),
    calib_size: int = typer.Option(D.calib_size, min=1, help="Number of calibration faces."),
    calib_method: Literal["auto", "minmax", "entropy", "percentile"] = typer.Option(D.calib_method, help="minmax, entropy, percentile, or auto (tries each, keeps the most accurate int8)."),
    per_channel: bool = typer.Option(D.per_channel, "--per-channel/--per-tensor", help="Per-channel int8 weights."),
    val_data: Optional[str] = typer.Option(None, help="Labelled faces for verification, never the calibration faces (default: the calibration data's val split; for emo-train finetune's model, the groups it held out)."),
    val_size: int = typer.Option(D.val_size, min=0, help="Verify on N validation faces (0: all)."),
    opset: int = typer.Option(D.opset, min=13, help="ONNX opset (13+ for per-channel QDQ)."),
    max_abs_diff: float = typer.Option(G.max_abs_diff, help="Gate: max |logit difference| of fp32 ONNX vs PyTorch."),
    min_agreement: float = typer.Option(G.min_agreement, help="Gate: minimum int8-vs-fp32 top-1 agreement (0-1)."),
    max_acc_drop: float = typer.Option(G.max_acc_drop, help="Gate: maximum int8 accuracy drop vs fp32 (0.01 = 1 point)."),
    one_face: bool = typer.Option(G.one_face, "--one-face", help="The two int8 gates tolerate one face, however large a share "
                                  "of the verification faces it is (a few dozen of your own faces: one is several points)."),
    ort_format: bool = typer.Option(D.ort_format, "--ort-format", help="Also write .ort files for minimal onnxruntime builds."),
    seed: int = typer.Option(D.seed, help="Seed for sampling calibration and validation faces."),
    crop_margin: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Crop margin per side the runtime adds to face boxes (default: the checkpoint's)."),
    equalize: bool = typer.Option(D.equalize, "--equalize/--no-equalize", help="Equalise depthwise-separable activation ranges on the calibration faces before int8 (same function, less int8 error)."),
    temperature: Optional[float] = typer.Option(None, min=0.05, max=20.0, help="Softmax temperature stored in the model (default: fitted on the verification faces and a spoiled copy of each, as a camera gives them, so confidence matches accuracy; 1 keeps the raw logits)."),
    robustness: bool = typer.Option(D.robustness, "--robustness/--no-robustness", help="Also report int8 accuracy under the ten degraded conditions of `emo-edge evaluate --degrade all`."),
    verbose: bool = VERBOSE, quiet: bool = QUIET, version: Optional[bool] = version_option("emo-export"),
) -> None:
    """Write NAME.onnx, NAME.int8.onnx and export-report.json; exit 1 if a verification gate fails."""
    setup_logging(verbose, quiet)
    from .exporter import export as do_export, format_report

    opts = ExportOptions(out_dir=out_dir, name=name, calib_data=calib_data, calib_size=calib_size, calib_method=calib_method,
                         per_channel=per_channel, val_data=val_data, val_size=val_size, opset=opset, ort_format=ort_format,
                         seed=seed, crop_margin=crop_margin, equalize=equalize, temperature=temperature,
                         robustness=robustness, gates=Gates(max_abs_diff, min_agreement, max_acc_drop, one_face))
    report = do_export(checkpoint, opts, log=log.info)
    print(format_report(report))
    print(f"report: {report['report_path']}")
    if not report["passed"]:
        bad = [k for k, g in report["gates"].items() if not g["passed"]]
        print(f"emo-export: error: verification failed ({', '.join(bad)}); kept the failed files as "
              f"{', '.join(report['files'].values())}; any earlier good export is untouched", file=sys.stderr)
        raise typer.Exit(1)
    print("export verified: " + ", ".join(report["files"].values()))


def main() -> None:
    cli_main(app, "emo-export", "emo-export needs the training install: pip install 'emo-fer[train]'")


if __name__ == "__main__":
    main()
