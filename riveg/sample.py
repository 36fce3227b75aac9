"""The bundled sample post (samples/): a public-domain NASA portrait from scikit-image's data."""

from __future__ import annotations

from pathlib import Path

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "samples" / "astronaut.jpg"
SAMPLE_TEXT = (
    "Astronaut Eileen Collins poses before commanding Discovery at NASA 's Johnson Space Center "
    "in Houston ."
)
