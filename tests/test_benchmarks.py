"""Each benchmark script in --quick mode: JSON schema and Markdown table. No timing thresholds."""
import json
import subprocess
import sys

from conftest import REPO


def run(script, *args):
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *map(str, args)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r


def check_device(d):
    assert {"cpu", "cores", "isa", "os", "python", "onnxruntime", "opencv", "threads"} <= set(d)
    assert {"neon", "dotprod", "avx2", "avx512_vnni"} <= set(d["isa"])


def test_model_latency_quick(tmp_path, seed_run):
    out = tmp_path / "m.json"
    r = run("bench_model.py", seed_run / "model.onnx", seed_run / "model.int8.onnx", "--checkpoint", seed_run / "model.pt", "--quick", "--out", out)
    d = json.loads(out.read_text())
    check_device(d["device"])
    rows = d["rows"]
    assert {(r["runtime"], r["precision"]) for r in rows} == {("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("pytorch", "fp32")}
    assert {r["batch"] for r in rows} == {1, 4}
    for row in rows:
        assert row["min_ms"] <= row["median_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["faces_per_s"] > 0
    assert any("vs_ort_fp32" in row and "vs_pytorch" in row for row in rows if row["precision"] == "int8")
    md = out.with_suffix(".md").read_text()
    assert "| model | runtime |" in md and md.count("\n|") >= 7 and "median ms" in r.stdout


def test_pipeline_quick(tmp_path):
    out = tmp_path / "p.json"
    run("bench_pipeline.py", "--quick", "--out", out)
    d = json.loads(out.read_text())
    check_device(d["device"])
    row = d["rows"][0]
    assert row["frames"] == 60 and row["faces"] >= 50 and row["frame_size"] == [640, 480]
    assert set(row["stages_median_ms"]) == {"decode", "detect", "preprocess", "classify", "track", "output", "total"}
    assert "| haar |" in out.with_suffix(".md").read_text()


def test_memory_quick(tmp_path):
    out = tmp_path / "mem.json"
    run("bench_memory.py", "--quick", "--out", out)
    d = json.loads(out.read_text())
    assert d["frames"] == 300 and d["cli"]["returncode"] == 0 and d["cli"]["peak_rss_mb"] > 10
    assert d["model_load_ms"] > 0 and len(d["samples"]) >= 2
    assert "peak RSS" in out.with_suffix(".md").read_text()


def test_compare_merges_devices(tmp_path, seed_run):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    run("bench_model.py", seed_run / "model.int8.onnx", "--quick", "--out", a)
    d = json.loads(a.read_text())
    d["device"]["board"] = "Raspberry Pi 5 Model B (pretend)"
    b.write_text(json.dumps(d))
    run("compare.py", a, b, "--out", tmp_path / "cmp")
    md = (tmp_path / "cmp.md").read_text()
    assert "Raspberry Pi 5 Model B (pretend)" in md and md.count("\n|") >= 6
    assert (tmp_path / "cmp.png").stat().st_size > 1000


def test_ladder_table_chart_and_stamp(tmp_path, seed_run):
    """benchmarks/ladder.py on the bundled models plus a reference file: one interleaved latency
    run, accuracy from the metadata (no --data), the chart; --stamp on a copy of a model only."""
    import shutil

    from emo.edge_runtime.classifier import Classifier

    out = tmp_path / "l.json"
    run("ladder.py", f"ref={seed_run / 'model.int8.onnx'}", "default", "--runs", 20, "--warmup", 2, "--out", out)
    d = json.loads(out.read_text())
    check_device(d["device"])
    rows = {r["label"]: r for r in d["rows"]}
    assert set(rows) == {"ref", "default"} and rows["default"]["bundled"] and not rows["ref"]["bundled"]
    assert rows["default"]["vs_default"] == 1.0 and rows["ref"]["vs_default"] > 0
    assert rows["default"]["accuracy"] == Classifier("default").meta.metrics["val_accuracy_int8"]
    assert out.with_suffix(".png").stat().st_size > 10_000 and d["chart"].endswith(".png")
    assert "| model | arch | params |" in out.with_suffix(".md").read_text()
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ladder.py"), "nope=missing.onnx", "--out", out],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    # what --stamp does to each bundled file, done to a copy of another model
    copy = tmp_path / "m.int8.onnx"
    shutil.copy(seed_run / "model.int8.onnx", copy)
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import ladder
    finally:
        sys.path.pop(0)
    ladder.stamp_latency(copy, 0.123, 0.5, "test cpu")
    m = Classifier(copy).meta
    assert m.metrics["latency_ms_1thread"] == 0.123 and m.metrics["latency_vs_default"] == 0.5 and m.metrics["latency_device"] == "test cpu"
    assert m.metrics["val_accuracy_int8"] == Classifier(seed_run / "model.int8.onnx").meta.metrics["val_accuracy_int8"]


def test_robustness_table_and_face_height_chart(tmp_path, synthetic_fer):
    out = tmp_path / "rb.json"
    run("robustness.py", "tiny", "--data", synthetic_fer, "--out", out)
    d = json.loads(out.read_text())
    check_device(d["device"])
    row = d["rows"][0]
    assert d["n"] == 7 * 20 and row["label"] == "tiny"
    for key in ("plain", "tta"):
        acc = row[key]["accuracy"]
        assert set(acc) == {"clean", *d["conditions"]} and len(d["conditions"]) == 10
        assert row[key]["worst"] == min(v for k, v in acc.items() if k != "clean")
        assert row[key]["per_face_ms"] > 0
    assert set(row["heights"]) == {f"face{h}" for h in d["heights"]} and row["heights"]["face48"] == row["plain"]["accuracy"]["clean"]
    md = out.with_suffix(".md").read_text()
    assert "| tiny --tta |" in md and "12 px" in md and out.with_suffix(".png").is_file()


def test_temperature_fitted_on_clean_and_on_spoiled_faces(tmp_path, synthetic_fer):
    out = tmp_path / "t.json"
    run("temperature.py", "tiny", "--data", synthetic_fer, "--out", out)
    d = json.loads(out.read_text())
    check_device(d["device"])
    assert d["n"] == 7 * 20 and set(d["models"]) == {"tiny"}
    r = d["models"]["tiny"]
    assert set(r) == {"clean", "both"}
    for fit in r.values():
        assert 0.05 <= fit["temperature"] <= 20 and all(0 <= fit[k] <= 1 for k in ("ece_clean", "ece_spoiled"))
    assert "| tiny |" in out.with_suffix(".md").read_text()
