"""emo exporter: checkpoint -> verified fp32 and int8 ONNX (needs the ``[train]`` extra)."""
