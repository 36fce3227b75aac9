"""The IoU-sweep plot: F1 of each grounded metric against the IoU threshold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

LABELS = {
    "gmner_f1": ("GMNER", "-", "o"),
    "eeg_f1": ("EEG (no type)", "-", "s"),
    "smner_f1": ("SMNER (masks)", "-", "^"),
    "ees_f1": ("EES (masks, no type)", "-", "v"),
    "mner_f1": ("MNER (no grounding, reference)", "--", None),
}


def write_sweep(sweep: dict[str, Any], out_dir: str | Path, title: str = "") -> dict[str, str]:
    """Write ``iou_sweep.json`` and ``iou_sweep.png`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "iou_sweep.json", out / "iou_sweep.png"
    json_path.write_text(json.dumps(sweep, indent=2) + "\n", encoding="utf-8")

    thresholds = sweep["thresholds"]
    # Figure without pyplot: Agg renders the PNG, no global backend or figure registry.
    figure = Figure(figsize=(7, 4.5), dpi=120)
    axes = figure.subplots()
    for key, (label, style, marker) in LABELS.items():
        if key not in sweep:
            continue
        values = [100 * v for v in sweep[key]]
        axes.plot(thresholds, values, style, marker=marker, label=label, linewidth=1.6)
    axes.set_xlabel("IoU threshold")
    axes.set_ylabel("F1 (%)")
    axes.set_xticks(thresholds)
    axes.set_xlim(min(thresholds) - 0.02, max(thresholds) + 0.02)
    axes.set_ylim(0, 102)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower left", fontsize=9)
    axes.set_title(title or "F1 against the grounding IoU threshold", fontsize=11)
    figure.tight_layout()
    figure.savefig(png_path)
    return {"json": str(json_path), "png": str(png_path)}
