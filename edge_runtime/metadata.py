"""The model metadata contract: what an emo ONNX file says about itself in ``metadata_props``.

export writes it with :func:`to_props`; the edge runtime reads it with :func:`from_props`, which
refuses anything missing or inconsistent. Everything lives under one key, ``emo``, as JSON.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from .errors import EmoError
from .labels import LABELS
from .preprocess import InputSpec

KEY = "emo"
FORMAT_VERSION = 1
OUTPUT_KINDS = ("logits", "probabilities")
PRECISIONS = ("fp32", "int8")


@dataclass
class ModelMetadata:
    arch: str
    precision: str
    input: InputSpec = field(default_factory=InputSpec)
    labels: tuple[str, ...] = LABELS
    output: str = "logits"
    temperature: float = 1.0  # logits are divided by it before the softmax (fitted at export on validation faces)
    metrics: dict = field(default_factory=dict)
    checkpoint_sha256: str = ""
    emo_version: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        d = asdict(self)
        d["labels"] = list(self.labels)
        return json.dumps(d, sort_keys=True)

    def validate(self) -> "ModelMetadata":
        problems = []
        for name, kind in (("arch", str), ("checkpoint_sha256", str), ("emo_version", str), ("metrics", dict), ("extra", dict)):
            if not isinstance(getattr(self, name), kind):
                problems.append(f"{name} {getattr(self, name)!r} is not a {kind.__name__}")
        if not _is_int(self.format_version) or self.format_version != FORMAT_VERSION:
            problems.append(f"format_version {self.format_version!r} (this emo reads {FORMAT_VERSION})")
        if not isinstance(self.labels, (tuple, list)) or tuple(self.labels) != LABELS:
            problems.append(f"labels {self.labels!r} are not the FER2013 labels {list(LABELS)}")
        if self.output not in OUTPUT_KINDS:
            problems.append(f"output {self.output!r} is not one of {OUTPUT_KINDS}")
        if not (_is_number(self.temperature) and 0.05 <= self.temperature <= 20):
            problems.append(f"temperature {self.temperature!r} must be a number within 0.05..20")
        elif self.output != "logits" and self.temperature != 1.0:
            problems.append(f"temperature {self.temperature!r} applies to logits, but the output is {self.output}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r} is not one of {PRECISIONS}")
        s = self.input
        if not (_is_int(s.size) and 8 <= s.size <= 512):
            problems.append(f"input size {s.size!r} is not an integer in 8..512")
        if not _is_int(s.channels) or s.channels != 1:
            problems.append(f"input channels {s.channels!r} (emo models take 1 gray channel)")
        if not _is_number(s.mean):
            problems.append(f"input mean {s.mean!r} is not a number")
        if not (_is_number(s.std) and s.std > 0):
            problems.append(f"input std {s.std!r} must be a number > 0")
        if not (_is_number(s.margin) and 0 <= s.margin <= 1):
            problems.append(f"crop margin {s.margin!r} must be a number within 0..1")
        if problems:
            raise EmoError("model metadata is inconsistent: " + "; ".join(problems))
        return self


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def to_props(meta: ModelMetadata) -> dict[str, str]:
    """Metadata -> ONNX ``metadata_props`` entries (string key -> string value)."""
    meta.validate()
    return {KEY: meta.to_json()}


def from_props(props: dict[str, str], source: str = "model") -> ModelMetadata:
    """ONNX ``metadata_props`` -> validated metadata, or :class:`EmoError` naming what is wrong."""
    if KEY not in props:
        raise EmoError(
            f"{source} has no emo metadata; it was not written by emo-export. "
            "Export it with `emo-export model.pt`, or pass an emo model with --model."
        )
    try:
        d = json.loads(props[KEY])
        if not isinstance(d, dict) or not isinstance(d.get("input"), dict):
            raise TypeError("not an object with an 'input' object")
        inp = InputSpec.from_dict(d.pop("input"))
        known = {f for f in ModelMetadata.__dataclass_fields__}
        meta = ModelMetadata(input=inp, **{k: v for k, v in d.items() if k in known})
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise EmoError(f"{source} has unreadable emo metadata ({e}); re-export it with emo-export") from None
    try:
        meta.validate()
    except EmoError as e:
        raise EmoError(f"{source}: {e}") from None
    meta.labels = tuple(meta.labels)
    return meta
