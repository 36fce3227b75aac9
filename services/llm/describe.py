"""Image descriptions for the knowledge prompt, from three sources.

1. an OpenAI-compatible vision endpoint (``RIVEG_LLM_VISION_MODEL`` on ``RIVEG_LLM_API_BASE``);
2. the released captions by image id (mPLUG-Owl for Twitter-GMNER, BLIP-2 for Twitter-2015/2017);
3. offline, a short factual sentence built from what the bundled MediaPipe person detector sees
   ("a photo of one person", "a close-up photo of one person", "a photo with no person visible").
"""

from __future__ import annotations

import base64
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from riveg.core.errors import InvalidInput
from riveg.core.images import check_image, decode_image
from riveg.core.limits import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from riveg.core.logging import get_logger
from riveg.data.captions import read_captions_blip2, read_captions_mplug
from riveg.data.conll import shared_datasets_dir
from riveg.vision.person import PersonDetector
from services.llm.cache import request_hash
from services.llm.openai import OpenAIClient

log = get_logger("services.llm.describe")

NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
CLOSE_UP_FRACTION = 0.35
VISION_PROMPT = "Describe this image in one short factual sentence."
DETECTOR_MODEL = "mediapipe-person@0.10.21"


@dataclass
class Description:
    """A description, where it came from (api, captions, detector) and the model behind it."""

    text: str
    source: str
    model: str


def people_phrase(count: int, largest_fraction: float) -> str:
    """The offline sentence for ``count`` detected people, the largest covering a fraction of
    the image area."""
    if count == 0:
        return "a photo with no person visible"
    if count == 1:
        close = "a close-up photo" if largest_fraction >= CLOSE_UP_FRACTION else "a photo"
        return f"{close} of one person"
    return f"a photo of {NUMBERS.get(count, 'several')} people"


class DetectorDescriber:
    """Describes an image by the people the bundled MediaPipe detector finds."""

    def __init__(
        self, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS
    ) -> None:
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self._detector = None
        self._lock = threading.Lock()

    def describe(self, image_bytes: bytes) -> Description:
        """A short factual sentence about the image (bad bytes raise InvalidInput)."""
        image = decode_image(image_bytes, max_bytes=self.max_bytes, max_pixels=self.max_pixels)
        with self._lock:
            if self._detector is None:
                self._detector = PersonDetector()
        rgb = np.asarray(image.convert("RGB"))
        people = self._detector.detect(rgb)
        largest = max((p.area for p in people), default=0.0) / float(image.width * image.height)
        return Description(people_phrase(len(people), largest), "detector", DETECTOR_MODEL)


def read_all_captions(root: Path | None = None) -> dict[str, str]:
    """{image id: caption} from every released caption file (mPLUG-Owl wins over BLIP-2)."""
    base = root or shared_datasets_dir()
    captions: dict[str, str] = {}
    for path in sorted(base.glob("*/captions_blip2.txt")):
        captions.update(read_captions_blip2(path))
    for path in sorted(base.glob("*/captions_mplug_owl/*.txt")):
        captions.update(read_captions_mplug(path))
    return captions


class CaptionIndex:
    """Released captions by image id, loaded on first use."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root
        self._captions: dict[str, str] | None = None
        self._lock = threading.Lock()

    def get(self, image_id: str) -> str | None:
        """The caption of an image id (``.jpg`` suffix ignored), or None."""
        with self._lock:
            if self._captions is None:
                self._captions = read_all_captions(self.root)
                log.info("captions loaded", images=len(self._captions))
        return self._captions.get(image_id.strip().removesuffix(".jpg")) if image_id else None


def vision_messages(image_bytes: bytes, prompt: str = VISION_PROMPT) -> list[dict]:
    """A chat message carrying the image as a data URL (PNG/JPEG bytes as uploaded)."""
    kind = "png" if image_bytes[:8] == b"\x89PNG\r\n\x1a\n" else "jpeg"
    url = f"data:image/{kind};base64,{base64.b64encode(image_bytes).decode()}"
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": url}},
            ],
        }
    ]


class ImageDescriber:
    """Describes an image: vision endpoint where configured, else the released caption of its
    image id, else the detector sentence. Endpoint answers are cached like generations."""

    def __init__(self, settings, cache=None) -> None:  # type: ignore[no-untyped-def]
        self.settings = settings
        self.cache = cache
        self.captions = CaptionIndex()
        limits = settings.limits
        self.detector = DetectorDescriber(limits.max_image_bytes, limits.max_image_pixels)
        self._client = None
        self._lock = threading.Lock()

    def _vision(self, image_bytes: bytes) -> Description:
        model = self.settings.llm.vision_model
        digest = request_hash(VISION_PROMPT, image_sha=_sha256(image_bytes), model=model)
        if self.cache is not None:
            hit = self.cache.get("vision", model, digest)
            if hit is not None:
                return Description(hit, "api", f"{model}@chat")
        with self._lock:
            if self._client is None:
                key = self.settings.llm.api_key
                self._client = OpenAIClient(
                    base_url=self.settings.llm.api_base,
                    model=model,
                    api_key=key.get_secret_value() if key else None,
                    timeout_s=self.settings.llm.api_timeout_s,
                    retries=self.settings.llm.api_retries,
                    concurrency=self.settings.llm.api_concurrency,
                )
        text = " ".join(self._client.chat(vision_messages(image_bytes), 96).text.split())
        if self.cache is not None:
            self.cache.put("vision", model, digest, text)
        return Description(text, "api", f"{model}@chat")

    def describe(self, image_bytes: bytes | None, image_id: str = "") -> Description:
        """The best description available; InvalidInput when there is nothing to describe or
        the image is not one (or over the byte or pixel limit)."""
        if image_bytes and self.settings.llm.vision_model:
            limits = self.settings.limits
            check_image(
                image_bytes, max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels
            )
            return self._vision(image_bytes)
        caption = self.captions.get(image_id) if image_id else None
        if caption:
            return Description(caption, "captions", "released-captions@1")
        if image_bytes:
            return self.detector.describe(image_bytes)
        raise InvalidInput(f"no image and no released caption for image id {image_id!r}")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
