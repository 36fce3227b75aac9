"""The SEG default (`selfie`: people by MediaPipe's selfie segmentation, other boxes by GrabCut),
GrabCut as the `grabcut` backend runs it (a crop around each box, scaled down), the whole image
scaled to 320 px (the grabcut default before), and a wider crop, against GrabCut at full
resolution on the whole image: mask agreement (IoU) and time per box.

    python benchmarks/seg_grabcut.py

Images: the bundled sample (512x512), the Twitter-GMNER sample in ../shared/samples (when
present), and the sample scaled up 2x (1024x1024). Boxes: the people the
mediapipe detector finds (the boxes the default VG backend gives) and nine fixed boxes (the
centre, the four quadrants, four side bands). Variants: the reference (whole image, full
resolution), the whole image scaled to 320 px, two crops (the box with half, or twice, its size
of context on each side, scaled to 160 px, the grabcut backend's, or 200 px), and the selfie
backend. Writes
benchmarks/results/seg_grabcut.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from riveg.core.config import load_settings  # noqa: E402
from riveg.vision.person import PersonDetector  # noqa: E402
from services.seg.backends import GrabCutSegBackend, SelfieSegBackend, grabcut_mask  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "seg_grabcut.json"
IMAGES = [
    ROOT / "samples" / "astronaut.jpg",
    ROOT.parent / "shared" / "samples" / "16_05_01_127.jpg",
]
UPSCALE = 2
FIXED_BOXES = 9
Masker = Callable[[np.ndarray, list[float]], np.ndarray]


def grabcut(max_side: int | None, margin: float | None) -> Masker:
    return lambda image, box: grabcut_mask(image, box, max_side, margin)


def variants() -> dict[str, Masker]:
    """Each variant's mask of one box (the reference first)."""
    selfie = SelfieSegBackend(load_settings())
    selfie.load()
    return {
        "reference (whole image, full resolution)": grabcut(None, None),
        "whole image at 320 px (the grabcut default before)": grabcut(320, None),
        "crop (margin 0.5, 160 px: the grabcut backend)": grabcut(
            GrabCutSegBackend.MAX_SIDE, GrabCutSegBackend.MARGIN
        ),
        "crop (margin 2, 200 px)": grabcut(200, 2.0),
        "selfie backend (the SEG default)": lambda image, box: selfie.segment(image, [box])[0],
    }


def boxes_of(image: np.ndarray, detector: PersonDetector) -> list[list[float]]:
    """The detector's people and nine fixed boxes."""
    h, w = image.shape[:2]
    people = [list(p.box) for p in detector.detect(image)]
    fixed = [
        [w * 0.25, h * 0.25, w * 0.75, h * 0.75],
        [0, 0, w / 2, h / 2], [w / 2, 0, w, h / 2], [0, h / 2, w / 2, h], [w / 2, h / 2, w, h],
        [0, 0, w / 3, h], [w * 2 / 3, 0, w, h], [0, 0, w, h / 3], [0, h * 2 / 3, w, h],
    ]  # fmt: skip
    return people + fixed


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def main() -> None:
    detector = PersonDetector()
    images = []
    people: dict[str, int] = {}  # the first boxes of each image are the detector's people
    for path in IMAGES:
        if not path.is_file():
            print(f"{path} is absent: skipped", file=sys.stderr)
            continue
        rgb = np.asarray(Image.open(path).convert("RGB"))
        boxes = boxes_of(rgb, detector)
        people[path.name] = people[f"{path.name} x{UPSCALE}"] = len(boxes) - FIXED_BOXES
        images.append((path.name, rgb, boxes))
        if max(rgb.shape[:2]) < 1024:  # a small image is also tried at twice its size
            big = Image.fromarray(rgb).resize((rgb.shape[1] * UPSCALE, rgb.shape[0] * UPSCALE))
            images.append((f"{path.name} x{UPSCALE}", np.asarray(big),
                           [[v * UPSCALE for v in box] for box in boxes]))  # fmt: skip
    rows = []
    maskers = variants()
    for name, rgb, boxes in images:
        for index, box in enumerate(boxes):
            masks, seconds = {}, {}
            for variant, masker in maskers.items():
                started = time.perf_counter()
                masks[variant] = masker(rgb, box)
                seconds[variant] = time.perf_counter() - started
            reference = masks[next(iter(maskers))]
            rows.append({"image": name, "size": list(rgb.shape[:2]), "box": [round(v) for v in box],
                         "person": index < people[name],
                         "iou": {v: round(iou(m, reference), 4) for v, m in masks.items()},
                         "ms": {v: round(s * 1000, 1) for v, s in seconds.items()}})  # fmt: skip
            print(json.dumps(rows[-1]), file=sys.stderr)
    summary = {}
    for variant in maskers:
        for scope, chosen in (
            ("all", rows),
            ("original size", [r for r in rows if f" x{UPSCALE}" not in r["image"]]),
            ("people only", [r for r in rows if r["person"]]),
        ):
            if not chosen:
                continue
            summary.setdefault(variant, {})[scope] = {
                "mean_iou": round(statistics.mean(r["iou"][variant] for r in chosen), 4),
                "min_iou": round(min(r["iou"][variant] for r in chosen), 4),
                "median_ms": round(statistics.median(r["ms"][variant] for r in chosen), 1),
            }
    report = {"command": "python benchmarks/seg_grabcut.py", "boxes": len(rows),
              "summary": summary, "rows": rows}  # fmt: skip
    RESULT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"boxes": len(rows), "summary": summary}))


if __name__ == "__main__":
    main()
