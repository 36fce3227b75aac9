"""Person detection with MediaPipe's bundled models (no download): face, pose, selfie mask.

Faces and the pose skeleton say *where* a person is; the selfie-segmentation mask says how far
the body extends. A person's box is the connected mask region holding its face or skeleton,
joined with that evidence; without a mask region the body is extrapolated from the face.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import mediapipe as mp
import numpy as np

MIN_REGION_FRACTION = 0.005


@dataclass(frozen=True)
class Person:
    """A detected person: box in image pixels [x1, y1, x2, y2], confidence, evidence used."""

    box: tuple[float, float, float, float]
    score: float
    evidence: str  # "face", "pose", "face+pose"; "+mask" when the body mask set the extent

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _union(a: tuple[float, ...], b: tuple[float, ...]) -> tuple[float, float, float, float]:
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


@dataclass
class _Anchor:
    box: tuple[float, float, float, float]
    points: list[tuple[float, float]]
    score: float
    evidence: str


class PersonDetector:
    """Finds people in an RGB image with MediaPipe face detection, pose and selfie segmentation."""

    name = "mediapipe-person"
    version = "0.10.21"

    def __init__(self, min_confidence: float = 0.5) -> None:
        self.min_confidence = min_confidence
        solutions = mp.solutions
        self._faces = solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence
        )
        self._pose = solutions.pose.Pose(
            static_image_mode=True, model_complexity=1, min_detection_confidence=min_confidence
        )
        self._selfie = solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        self._lock = threading.Lock()  # MediaPipe graphs are not thread-safe

    def _anchors(self, rgb: np.ndarray) -> list[_Anchor]:
        height, width = rgb.shape[:2]
        anchors: list[_Anchor] = []
        faces = self._faces.process(rgb)
        for detection in faces.detections or []:
            rel = detection.location_data.relative_bounding_box
            x1, y1 = rel.xmin * width, rel.ymin * height
            box = (x1, y1, x1 + rel.width * width, y1 + rel.height * height)
            centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            anchors.append(_Anchor(box, [centre], float(detection.score[0]), "face"))
        pose = self._pose.process(rgb)
        if pose.pose_landmarks:
            points = [
                (lm.x * width, lm.y * height)
                for lm in pose.pose_landmarks.landmark
                if lm.visibility >= self.min_confidence and 0 <= lm.x <= 1 and 0 <= lm.y <= 1
            ]
            if len(points) >= 4:
                xs, ys = zip(*points, strict=True)
                visibility = [lm.visibility for lm in pose.pose_landmarks.landmark]
                anchors.append(
                    _Anchor(
                        (min(xs), min(ys), max(xs), max(ys)),
                        points,
                        float(np.mean(sorted(visibility)[-len(points) :])),
                        "pose",
                    )
                )
        return anchors

    def _body_regions(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Connected components of the selfie mask: (label image, stats) of large regions."""
        mask = self._selfie.process(rgb).segmentation_mask
        binary = (mask > 0.5).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        min_area = MIN_REGION_FRACTION * binary.size
        keep = np.zeros(count, dtype=bool)
        keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
        labels[~keep[labels]] = 0
        return labels, stats

    @staticmethod
    def _extrapolate(anchor: _Anchor, width: int, height: int) -> tuple[float, ...]:
        x1, y1, x2, y2 = anchor.box
        if anchor.evidence == "face":  # a standing/sitting body below the face
            fw, fh = x2 - x1, y2 - y1
            cx = (x1 + x2) / 2
            box = (cx - 1.6 * fw, y1 - 0.4 * fh, cx + 1.6 * fw, y2 + 6.0 * fh)
        else:  # the skeleton's box, padded
            pw, ph = (x2 - x1) * 0.12, (y2 - y1) * 0.12
            box = (x1 - pw, y1 - ph, x2 + pw, y2 + ph)
        return (max(0.0, box[0]), max(0.0, box[1]), min(width, box[2]), min(height, box[3]))

    def detect(self, rgb: np.ndarray) -> list[Person]:
        """People in an HxWx3 uint8 RGB image, largest first."""
        height, width = rgb.shape[:2]
        image = np.ascontiguousarray(rgb)
        with self._lock:
            anchors = self._anchors(image)
            if not anchors:
                return []
            labels, stats = self._body_regions(image)
        people: list[Person] = []
        for anchor in anchors:
            hits = [
                labels[min(int(y), height - 1), min(int(x), width - 1)] for x, y in anchor.points
            ]
            hits = [h for h in hits if h > 0]
            if hits:
                label = max(set(hits), key=hits.count)
                left, top, w, h = stats[label, :4]
                region = (float(left), float(top), float(left + w), float(top + h))
                box, evidence = _union(region, anchor.box), anchor.evidence + "+mask"
            else:
                box, evidence = self._extrapolate(anchor, width, height), anchor.evidence
            people.append(Person(tuple(round(v, 2) for v in box), anchor.score, evidence))
        return _merge(people)

    def close(self) -> None:
        """Release the MediaPipe graphs."""
        for graph in (self._faces, self._pose, self._selfie):
            graph.close()


def _merge(people: list[Person], threshold: float = 0.5) -> list[Person]:
    """Join detections of the same person (a face inside the pose's body, say)."""
    merged: list[Person] = []
    for person in sorted(people, key=lambda p: p.area, reverse=True):
        for index, kept in enumerate(merged):
            if _iou(kept.box, person.box) >= threshold or _contains(kept.box, person.box):
                sources = sorted(set(kept.evidence.split("+")) | set(person.evidence.split("+")))
                merged[index] = Person(kept.box, max(kept.score, person.score), "+".join(sources))
                break
        else:
            merged.append(person)
    return merged


def _contains(outer: tuple[float, ...], inner: tuple[float, ...], slack: float = 0.9) -> bool:
    """Whether most of inner lies inside outer."""
    x1, y1 = max(outer[0], inner[0]), max(outer[1], inner[1])
    x2, y2 = min(outer[2], inner[2]), min(outer[3], inner[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    area = (inner[2] - inner[0]) * (inner[3] - inner[1])
    return area > 0 and inter / area >= slack
