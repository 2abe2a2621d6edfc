"""An ONNX file's emo side: the metadata stamp and short tensor names. Needs onnx, not torch, so
the benchmarks can rewrite a bundled model's metadata with it."""
from __future__ import annotations

from pathlib import Path

import onnx

from emo.edge_runtime import __version__
from emo.edge_runtime.files import atomic_write_bytes
from emo.edge_runtime.metadata import ModelMetadata, to_props


def compact_names(m: onnx.ModelProto) -> None:
    """Give every internal tensor and node a short name (the graph's input and output keep theirs).
    The exporters' descriptive names (``/features/3/body/0/0/Conv_output_0_quantized``...) are
    repeated wherever a tensor is used and make up about an eighth of a small int8 file."""
    g = m.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    new: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return new.setdefault(name, format(len(new), "x"))

    for t in g.initializer:
        t.name = short(t.name)
    for i, n in enumerate(g.node):
        n.name = f"n{i:x}"
        n.input[:] = [short(x) for x in n.input]
        n.output[:] = [short(x) for x in n.output]
    for v in g.value_info:
        v.name = short(v.name)


def stamp_metadata(path: Path, meta: ModelMetadata) -> None:
    """Write ``meta`` into the ONNX file at ``path`` (with short tensor names), atomically."""
    m = onnx.load(str(path))
    compact_names(m)
    props = {p.key: p.value for p in m.metadata_props}
    props.update(to_props(meta))
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    m.producer_name, m.producer_version = "emo", __version__
    m.doc_string = f"emo {meta.arch} emotion classifier ({meta.precision}); labels: {', '.join(meta.labels)}"
    onnx.checker.check_model(m)
    atomic_write_bytes(path, m.SerializeToString())
