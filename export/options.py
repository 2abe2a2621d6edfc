"""What an export can be asked to do, with its defaults: the one place they are written (the
CLI reads them from here). Plain dataclasses, so the CLI imports them without torch or onnx."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

CALIB_METHODS = ("minmax", "entropy", "percentile")  # "auto" tries each and keeps the most accurate
DEFAULT_OPSET = 17  # onnxruntime >= 1.14 (any current Raspberry Pi wheel) runs opset 17; 13+ for per-channel QDQ


@dataclass
class Gates:
    """The checks an export must pass before its files are called done."""

    max_abs_diff: float = 1e-4  # fp32 ONNX vs PyTorch logits
    min_agreement: float = 0.98  # int8 vs fp32 top-1 agreement
    max_acc_drop: float = 0.01  # int8 accuracy drop vs fp32 (fraction: 0.01 = 1 point)
    one_face: bool = False  # the int8 gates tolerate one face whatever share of the faces it is (a few dozen of a user's own)


@dataclass
class ExportOptions:
    out_dir: Optional[Path] = None  # default: the checkpoint's folder
    name: Optional[str] = None  # default: the checkpoint's stem
    calib_data: Optional[str] = None  # default: the training data recorded in the checkpoint
    calib_size: int = 500
    calib_method: str = "auto"  # minmax | entropy | percentile | auto
    per_channel: bool = True
    val_data: Optional[str] = None  # default: the calibration data's val split
    val_size: int = 0  # 0: the whole validation split
    opset: int = DEFAULT_OPSET
    ort_format: bool = False
    seed: int = 0  # for sampling calibration and validation faces
    crop_margin: Optional[float] = None  # override the checkpoint's crop margin for the runtime
    equalize: bool = True  # equalise depthwise-separable activation ranges before int8 (export/equalize.py)
    temperature: Optional[float] = None  # None: fitted on the verification faces and a spoiled copy of each (int8 logits); 1.0: none
    robustness: bool = True  # also score int8 under the robustness benchmark's conditions (emo.edge_runtime.degrade)
    gates: Gates = field(default_factory=Gates)
