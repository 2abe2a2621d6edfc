"""What `emo-train finetune` prints: the lines about DATA and the before/after table."""
from __future__ import annotations

from emo.edge_runtime.labels import LABELS


def report_lines(record: dict) -> list[str]:
    r = record["report"]
    lines = [f"DATA: {r['count']} faces of {record['groups']['train'] + record['groups']['val']} groups from {r['source']}",
             "  per class: " + ", ".join(f"{k} {v}" for k, v in r["per_class"].items() if v)]
    if r.get("unreadable_count"):
        lines.append(f"  skipped {r['unreadable_count']} unreadable file(s), e.g. {', '.join(r['unreadable'][:3])}")
    if r.get("blank_skipped"):
        lines.append(f"  skipped {r['blank_skipped']} blank image(s)")
    missing = [c for c in LABELS if not r["per_class"].get(c)]
    if missing:
        lines.append(f"  no faces of {', '.join(missing)}: the model keeps what the base model knows of them")
    return lines


def format_before_after(result: dict) -> str:
    """The before/after table the command prints."""
    rows = [("", f"before ({result['base']})", "after")]
    u = result["figures"]["user_val"]
    rows.append((f"your validation faces (n={u['n']}, {result['groups']['val']} groups)",
                 f"{u['before']['accuracy'] * 100:.2f}%", f"{u['after']['accuracy'] * 100:.2f}%"))
    refit = result.get("refit")
    if "int8" in result:
        what = "  the refit model, int8 (trained on them too)" if refit else "  the same, int8 (exported)"
        rows.append((what, "", f"{result['int8']['accuracy'] * 100:.2f}%"))
    f = result["figures"].get("fer2013_publictest")
    if f:
        rows.append((f"FER2013 PublicTest (n={f['n']})", f"{f['before']['accuracy'] * 100:.2f}%", f"{f['after']['accuracy'] * 100:.2f}%"))
        if "missing_classes_recall" in f["before"]:
            lack = ", ".join(c for c in LABELS if c not in result["classes_seen"])
            rows.append((f"  recall of classes DATA lacks ({lack})", f"{f['before']['missing_classes_recall'] * 100:.2f}%",
                         f"{f['after']['missing_classes_recall'] * 100:.2f}%"))
    else:
        rows.append(("FER2013 PublicTest", "not at hand", "(--replay PATH)"))
    if refit and refit.get("fer2013_publictest") is not None:
        rows.append((f"  the refit model (all {refit['faces']} of your faces)", "", f"{refit['fer2013_publictest'] * 100:.2f}%"))
    w = max(len(r[0]) for r in rows) + 2
    return "\n".join(f"{r[0]:<{w}}{r[1]:>18}{r[2]:>10}" for r in rows)
