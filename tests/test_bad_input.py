"""Bad input is refused with one clear line, and never reaches a decoder or a model unbounded:
image limits and modes, text and entity limits, `riveg batch` / `riveg analyze` input."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from riveg.core.config import LimitsSettings, load_settings
from riveg.core.errors import InvalidInput
from riveg.core.images import check_image, decode_image, image_array, to_rgb
from riveg.core.limits import MAX_ENTITIES, MAX_TEXT_CHARS, check_count, check_text
from riveg.orchestration.commands import image_path, read_batch_lines, read_image_file
from riveg.orchestration.pipeline import submit_post
from riveg.orchestration.tasks import PostError
from riveg.serving.client import StageCallError
from riveg.serving.messages import box_to_proto, entity_to_proto, image_ref
from riveg.v1 import llm_pb2, mner_pb2, seg_pb2, ve_pb2, vg_pb2
from tests.conftest import SAMPLE_IMAGE, SAMPLE_TEXT

BOMB_MESSAGE = (
    "the image is too large: 30000x30000 = 900,000,000 pixels, the limit is 16,777,216 pixels"
)
TOO_LONG_TEXT = "x " * 1001  # 2002 characters


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels, with almost no pixel data (a
    decompression bomb as far as a decoder trusting the header goes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def gray16_gradient() -> tuple[np.ndarray, bytes]:
    """A 16-bit grayscale gradient 0..65535 (8 x 256) and its PNG bytes."""
    values = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (8, 1))
    return values, encode(Image.fromarray(values))


# --- image limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("side", [30000, 10000])  # past Pillow's error, and its warning, limit
def test_a_decompression_bomb_header_is_refused_by_name(side: int) -> None:
    bomb = png_header(side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape
        for decode in (decode_image, image_array, check_image):
            with pytest.raises(InvalidInput) as refused:
                decode(bomb)
            message = str(refused.value)
            assert f"{side}x{side}" in message and "the limit is 16,777,216 pixels" in message
            assert "\n" not in message and "decompression bomb" not in message.lower()
    with pytest.raises(InvalidInput, match="^" + BOMB_MESSAGE + "$"):
        decode_image(png_header(30000, 30000))


def test_pixel_and_byte_limits_are_parameters() -> None:
    data = SAMPLE_IMAGE.read_bytes()
    assert decode_image(data).size == (512, 512)
    with pytest.raises(InvalidInput, match=r"512x512 = 262,144 pixels, the limit is 1,000 pixels"):
        decode_image(data, max_pixels=1000)
    with pytest.raises(InvalidInput, match=r"61,368 bytes, the limit is 1,000 bytes$"):
        image_array(data, max_bytes=1000)
    assert check_image(data, max_pixels=512 * 512) == (512, 512)
    # 4097 x 4097 is past the default limit (tweet images are at most 4096 a side)
    with pytest.raises(InvalidInput, match="4097x4097"):
        check_image(png_header(4097, 4097))


def test_limits_are_settings_with_the_core_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = LimitsSettings()
    assert (limits.max_image_bytes, limits.max_image_pixels) == (20 * 1024 * 1024, 4096 * 4096)
    assert (limits.max_text_chars, limits.max_entities) == (MAX_TEXT_CHARS, MAX_ENTITIES)
    monkeypatch.setenv("RIVEG_LIMITS_MAX_TEXT_CHARS", "10")
    monkeypatch.setenv("RIVEG_LIMITS_MAX_IMAGE_PIXELS", "100")
    configured = load_settings().limits
    assert (configured.max_text_chars, configured.max_image_pixels) == (10, 100)


def test_empty_and_damaged_images_are_one_line_errors() -> None:
    with pytest.raises(InvalidInput, match=r"^the image is empty \(0 bytes\)$"):
        decode_image(b"")
    with pytest.raises(InvalidInput, match="are not an image"):
        decode_image(b"these bytes are text, not pixels")
    with pytest.raises(InvalidInput, match="damaged or truncated") as truncated:
        decode_image(SAMPLE_IMAGE.read_bytes()[:5000])
    assert "\n" not in str(truncated.value)


# --- decoding every mode to 8-bit RGB ---------------------------------------------------------


def test_16_bit_gray_keeps_its_gradient() -> None:
    values, data = gray16_gradient()
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    decoded = image_array(data)
    assert decoded.shape == (8, 256, 3) and decoded.dtype == np.uint8
    row = decoded[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0) and len(np.unique(row)) > 200  # a gradient, not white
    assert np.array_equal(row, (values[0] >> 8).astype(int))
    assert (decoded[..., 0] == decoded[..., 1]).all() and (decoded[..., 1] == decoded[..., 2]).all()


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "<i4"])
def test_16_and_32_bit_integer_modes_are_scaled(dtype: str) -> None:
    image = Image.fromarray(np.array([[0, 32768, 65535]], dtype=dtype))
    assert image.mode in {"I;16", "I;16B", "I"}
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 128, 255]


def test_32_bit_integer_image_of_8_bit_values_is_kept() -> None:
    image = Image.fromarray(np.array([[0, 100, 255]], dtype="<i4"))
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 100, 255]


def test_float_gray_of_0_to_1_is_scaled() -> None:
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32))
    assert image.mode == "F"
    assert np.asarray(decode_image(encode(image, "TIFF")))[0, :, 0].tolist() == [0, 128, 255, 0]


def test_cmyk_becomes_rgb() -> None:
    cyan = Image.new("CMYK", (8, 8), (255, 0, 0, 0))
    for fmt in ("JPEG", "TIFF"):
        pixel = image_array(encode(cyan, fmt))[4, 4].astype(int)
        assert np.abs(pixel - [0, 255, 255]).max() <= 2, fmt


def test_palette_with_transparency_is_composited_over_white() -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black (transparent), 1 blue
    image.putpixel((0, 0), 1)
    data = encode(image, transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    decoded = image_array(data)
    assert decoded[0, 0].tolist() == [0, 0, 255] and decoded[3, 3].tolist() == [255, 255, 255]


def test_la_and_rgba_are_composited_over_white() -> None:
    gray = Image.new("LA", (2, 1))
    gray.putpixel((0, 0), (0, 0))
    gray.putpixel((1, 0), (0, 255))
    assert image_array(encode(gray))[0].tolist() == [[255, 255, 255], [0, 0, 0]]
    red = Image.new("RGBA", (3, 1))
    for x, alpha in enumerate((0, 128, 255)):
        red.putpixel((x, 0), (255, 0, 0, alpha))
    assert image_array(encode(red))[0].tolist() == [[255, 255, 255], [255, 127, 127], [255, 0, 0]]


def test_bilevel_and_gray_modes() -> None:
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    assert image_array(encode(bilevel))[0, :, 0].tolist() == [0, 255]
    gray = Image.fromarray(np.array([[0, 17, 200]], dtype=np.uint8))
    assert image_array(encode(gray))[0].tolist() == [[0] * 3, [17] * 3, [200] * 3]


def test_exif_rotated_jpeg_keeps_todays_orientation() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    data = encode(image, "JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image(data)
    with Image.open(io.BytesIO(data)) as raw:
        before = ImageOps.exif_transpose(raw).convert("RGB")  # the decoding before the limits
    assert decoded.size == (20, 40) == before.size
    assert np.array_equal(np.asarray(decoded), np.asarray(before))


def test_the_sample_decodes_as_before() -> None:
    data = SAMPLE_IMAGE.read_bytes()
    with Image.open(io.BytesIO(data)) as raw:
        before = np.asarray(ImageOps.exif_transpose(raw).convert("RGB"))
    assert np.array_equal(image_array(data), before)


# --- text and entity limits -------------------------------------------------------------------


def test_text_checks_are_one_line() -> None:
    check_text("x" * MAX_TEXT_CHARS)
    with pytest.raises(InvalidInput, match=r"^the post text is empty$"):
        check_text("  ")
    check_text("", required=False)
    with pytest.raises(
        InvalidInput, match=r"^the post text is too long: 2002 characters, the limit is 2000$"
    ):
        check_text(TOO_LONG_TEXT)
    with pytest.raises(InvalidInput, match=r"character 4 is '\\udce9' \(a lone surrogate"):
        check_text(b"caf\xe9 au lait".decode("utf-8", "surrogateescape"))
    check_count(MAX_ENTITIES)
    with pytest.raises(InvalidInput, match=r"^too many boxes: 33, the limit is 32 per call$"):
        check_count(33, what="boxes")


class RecordingStore:
    """An object store that only records what is put into it."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def put_bytes(self, key: str, data: bytes, content_type: str = "") -> str:
        self.keys.append(key)
        return key


@pytest.mark.parametrize(
    ("text", "image", "message"),
    [
        (TOO_LONG_TEXT, b"x", "too long: 2002 characters"),
        ("caf\udce9", b"x", "not valid Unicode"),
        ("   ", b"x", "empty"),
        ("fine text", b"\0" * 2000, "2,000 bytes, the limit is 1,000 bytes"),
    ],
)
def test_submit_post_refuses_before_uploading(text: str, image: bytes, message: str) -> None:
    store = RecordingStore()
    runtime = SimpleNamespace(
        settings=load_settings(store_kind="local", limits_max_image_bytes=1000), store=store
    )
    with pytest.raises(InvalidInput, match=message):
        submit_post(runtime, text, image, "p")
    assert store.keys == []  # nothing uploaded


# --- the servers refuse over the limits (default settings) ------------------------------------


def _entities(count: int) -> list:
    start = SAMPLE_TEXT.index("NASA")
    entity = {"text": "NASA", "start": start, "end": start + 4, "type": "ORG"}
    return [entity_to_proto(entity) for _ in range(count)]


def _refused(cluster, stage: str, method: str, request: object) -> str:
    with pytest.raises(StageCallError) as refused:
        cluster.client(stage).call(method, request)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details.startswith("InvalidInput: ")
    return refused.value.details.removeprefix("InvalidInput: ")


def test_servers_refuse_text_and_entities_over_the_limits(cluster) -> None:
    key = cluster.store.put_bytes("images/limits-sample", SAMPLE_IMAGE.read_bytes())
    ref = image_ref(key, 512, 512)
    long_text = "Obama " * 400  # 2400 characters
    too_long = "the post text is too long: 2400 characters, the limit is 2000"
    too_many = "too many entities: 33, the limit is 32 per call"
    assert _refused(cluster, "mner", "Recognize", mner_pb2.RecognizeRequest(text=long_text)) == (
        too_long
    )
    assert too_long == _refused(
        cluster, "llm", "Knowledge", llm_pb2.KnowledgeRequest(text=long_text)
    )
    expand = llm_pb2.ExpandRequest(text=long_text, entities=_entities(1))
    assert _refused(cluster, "llm", "Expand", expand) == too_long
    expand = llm_pb2.ExpandRequest(text=SAMPLE_TEXT, entities=_entities(33))
    assert _refused(cluster, "llm", "Expand", expand) == too_many
    entail = ve_pb2.EntailRequest(image=ref, entities=_entities(33))
    assert _refused(cluster, "ve", "Entail", entail) == too_many
    ground = vg_pb2.GroundRequest(image=ref, entities=_entities(33))
    assert _refused(cluster, "vg", "Ground", ground) == too_many
    box = box_to_proto([0.0, 0.0, 10.0, 10.0])
    segment = seg_pb2.SegmentRequest(image=ref, boxes=[box] * 33)
    assert _refused(cluster, "seg", "Segment", segment) == (
        "too many boxes: 33, the limit is 32 per call"
    )
    # at the limit, calls are served
    assert len(cluster.client("ve").call("Entail", ve_pb2.EntailRequest(
        image=ref, entities=_entities(32))).results) == 32  # fmt: skip


def test_servers_and_the_store_step_refuse_a_bomb(cluster) -> None:
    key = cluster.store.put_bytes("images/limits-bomb", png_header(30000, 30000))
    entail = ve_pb2.EntailRequest(image=image_ref(key, 1, 1), entities=_entities(1))
    assert _refused(cluster, "ve", "Entail", entail) == BOMB_MESSAGE
    with pytest.raises(PostError, match=BOMB_MESSAGE):
        submit_post(cluster, "Obama in Paris", png_header(30000, 30000), "bomb").get()


# --- riveg batch input ------------------------------------------------------------------------


def test_batch_lines_that_are_not_utf8_are_that_lines_error() -> None:
    lines = [
        b'{"id": "a", "text": "fine", "image": "a.jpg"}\n',
        b'{"id": "b", "text": "caf\xe9", "image": "a.jpg"}\n',
        b"\n",
        b'\xef\xbb\xbf{"text": "bom only on line 1 is dropped"}\n',
        b"[" * 100_000 + b"\n",
        b'{"id": "\\ud800", "text": "x"}\n',
    ]
    entries = list(read_batch_lines(lines))
    assert entries[0] == (1, {"id": "a", "text": "fine", "image": "a.jpg"}, None)
    assert entries[1] == (2, None, "line 2: not UTF-8 (byte 0xe9 at column 25)")
    assert entries[2] == (
        4,
        None,
        "line 4: not JSON (Unexpected UTF-8 BOM (decode using utf-8-sig))",
    )
    assert entries[3] == (5, None, "line 5: not JSON (nested too deeply)")
    assert entries[4] == (6, None, "line 6: the 'id' is not valid Unicode (a lone surrogate)")
    bom = list(read_batch_lines([b'\xef\xbb\xbf{"text": "t"}\n']))
    assert bom == [(1, {"text": "t", "id": "line-1"}, None)]
    shapes = list(read_batch_lines([b'["a"]\n', b'{"id": "x"}\n', b'{"text": 42}\n']))
    assert [error for _, _, error in shapes] == [
        "line 1: expected an object with 'text' and 'image' (got list)",
        "line 2: the post has no 'text'",
        "line 3: 'text' must be a string (got int)",
    ]


@pytest.fixture()
def images_tree(tmp_path: Path) -> Path:
    """images/ holding the sample, a subfolder and a link out; outside.jpg beside it."""
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    shutil.copy(SAMPLE_IMAGE, images / "astronaut.jpg")
    shutil.copy(SAMPLE_IMAGE, tmp_path / "outside.jpg")
    (images / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    (images / "inner-link.jpg").symlink_to(images / "astronaut.jpg")
    return images


def test_image_paths_are_confined_to_the_images_folder(images_tree: Path) -> None:
    root = images_tree.resolve()
    assert image_path(root, "astronaut.jpg") == root / "astronaut.jpg"
    assert image_path(root, "inner-link.jpg") == root / "astronaut.jpg"  # a link inside is fine
    outside = str(images_tree.parent / "outside.jpg")
    refused = {
        "../outside.jpg": "image path '../outside.jpg' contains '..'; it must stay under --images",
        "sub/../../outside.jpg": "contains '..'",
        outside: f"image path {outside!r} is absolute; give a path relative to --images",
        "link.jpg": f"image path 'link.jpg' leads outside --images (to {Path(outside).resolve()})",
        "missing.jpg": "image 'missing.jpg' not found under --images",
        "sub": "image path 'sub' is not a file",
        "": "the post's 'image' is empty (give a path relative to --images)",
        None: "the post has no 'image' (a path relative to --images)",
        5: "the post's 'image' must be a path relative to --images, not int",
        "a\0b": "contains a NUL character",
    }
    for value, message in refused.items():
        with pytest.raises(InvalidInput) as error:
            image_path(root, value)
        assert message in str(error.value), value


def test_image_files_are_checked_before_they_are_read(tmp_path: Path) -> None:
    limits = LimitsSettings(max_image_bytes=1000)
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\0" * 5000)
    with pytest.raises(InvalidInput, match="5,000 bytes, the limit is 1,000 bytes"):
        read_image_file(big, limits)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(30000, 30000))
    with pytest.raises(InvalidInput, match=BOMB_MESSAGE):
        read_image_file(bomb, LimitsSettings())


def _riveg() -> str:
    return str(Path(sys.executable).parent / "riveg")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVEG_")}
    return {**env, **extra}


@pytest.mark.slow
def test_batch_command_with_every_kind_of_bad_post(images_tree: Path, tmp_path: Path) -> None:
    """One `riveg batch` run (models load once): each bad post gets its own error line, the
    good ones finish, and nothing of a refused post is uploaded."""
    gradient = np.tile(np.linspace(0, 65535, 512).astype(np.uint16), (256, 1))
    (images_tree / "gray16.png").write_bytes(encode(Image.fromarray(gradient)))
    (images_tree / "bomb.png").write_bytes(png_header(30000, 30000))
    (images_tree / "big.jpg").write_bytes(b"\0" * 2_500_000)
    outside = str(tmp_path / "outside.jpg")

    def post(post_id: str, **fields: object) -> bytes:
        return json.dumps({"id": post_id, "text": "Eileen Collins at NASA", **fields}).encode()

    lines = [
        post("good", text=SAMPLE_TEXT, image="astronaut.jpg"),
        b'{"id": "bad-utf8", "text": "caf\xe9", "image": "astronaut.jpg"}',
        post("dotdot", image="../outside.jpg"),
        post("absolute", image=outside),
        post("symlink", image="link.jpg"),
        post("no-image"),
        post("long-text", text=TOO_LONG_TEXT, image="astronaut.jpg"),
        post("bomb", image="bomb.png"),
        post("big", image="big.jpg"),
        post("gray16", image="gray16.png"),
    ]
    posts = tmp_path / "posts.jsonl"
    posts.write_bytes(b"\n".join(lines) + b"\n")
    out, store = tmp_path / "out.jsonl", tmp_path / "store"
    done = subprocess.run(
        [_riveg(), "batch", str(posts), "--images", str(images_tree), "--out", str(out),
         "--json"],
        capture_output=True, text=True, timeout=900,
        env=_env(RIVEG_STORE_PATH=str(store), RIVEG_LIMITS_MAX_IMAGE_BYTES="2000000"),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]  # some posts failed
    assert "Traceback" not in done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert (summary["done"], summary["failed"]) == (2, 8), done.stderr[-3000:]
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    errors = {post_id: r.get("error") for post_id, r in records.items()}
    resolved_outside = Path(outside).resolve()
    assert errors == {
        "good": None,
        "line-2": f"line 2: not UTF-8 (byte 0xe9 at column {lines[1].index(0xE9) + 1})",
        "dotdot": "InvalidInput: image path '../outside.jpg' contains '..'; it must stay "
        "under --images",
        "absolute": f"InvalidInput: image path {outside!r} is absolute; give a path relative "
        "to --images",
        "symlink": f"InvalidInput: image path 'link.jpg' leads outside --images (to "
        f"{resolved_outside})",
        "no-image": "InvalidInput: the post has no 'image' (a path relative to --images)",
        "long-text": "InvalidInput: the post text is too long: 2002 characters, the limit is 2000",
        "bomb": f"InvalidInput: {BOMB_MESSAGE}",
        "big": "InvalidInput: the image is too large: 2,500,000 bytes, the limit is 2,000,000 "
        "bytes",
        "gray16": None,
    }
    assert records["good"]["entities"]
    assert any(e["text"].endswith("Eileen Collins") for e in records["good"]["entities"])
    assert "entities" in records["gray16"]
    uploaded = sorted(p.name for p in (store / "images" / "sha256").iterdir())
    assert len(uploaded) == 2  # only the two good posts' images were uploaded (by content)
    assert [p.name for p in (store / "images").iterdir()] == ["sha256"]


@pytest.mark.slow
def test_analyze_refuses_bad_text_and_images_in_one_line(tmp_path: Path) -> None:
    """Refused before any model loads: one `Error:` line, exit 1, no traceback."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(30000, 30000))
    cases = [
        ([b"--text", b"caf\xe9 at NASA", b"--image", bytes(SAMPLE_IMAGE)],
         "Error: the post text is not valid Unicode: character 4 is '\\udce9' (a lone "
         "surrogate, e.g. from bytes that are not UTF-8)"),
        ([b"--text", TOO_LONG_TEXT.encode(), b"--image", bytes(SAMPLE_IMAGE)],
         "Error: the post text is too long: 2002 characters, the limit is 2000"),
        ([b"--text", b"Eileen Collins at NASA", b"--image", bytes(bomb)], f"Error: {BOMB_MESSAGE}"),
    ]  # fmt: skip
    env = _env(RIVEG_STORE_PATH=str(tmp_path / "store"))
    for args, message in cases:
        run = subprocess.run(
            [_riveg().encode(), b"analyze", *args], capture_output=True, timeout=300, env=env
        )
        stderr = run.stderr.decode("utf-8", "backslashreplace")
        assert run.returncode == 1, stderr[-2000:]
        assert stderr.strip().splitlines()[-1] == message
        assert "Traceback" not in stderr and run.stdout == b""
    assert not (tmp_path / "store").exists()  # nothing uploaded


# --- fuzzing ----------------------------------------------------------------------------------

SEEDS = [
    SAMPLE_IMAGE.read_bytes()[:4096],
    gray16_gradient()[1],
    encode(Image.new("RGBA", (4, 4), (1, 2, 3, 4))),
    encode(Image.new("P", (4, 4)), "GIF"),
    encode(Image.new("CMYK", (4, 4)), "TIFF"),
    encode(Image.new("RGB", (4, 4)), "BMP"),
    png_header(30000, 30000),
]


@st.composite
def damaged_images(draw: st.DrawFn) -> bytes:
    """A real image's bytes, cut and with some bytes overwritten."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=512), damaged_images()))
def test_fuzz_decode_image_only_raises_invalid_input(data: bytes) -> None:
    try:
        image = decode_image(data)
    except InvalidInput as exc:
        assert "\n" not in str(exc)
    else:
        assert image.mode == "RGB" and image.width * image.height <= 4096 * 4096


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=80), st.sampled_from([
    b'{"id": "p", "text": "t", "image": "a.jpg"}', b'{"text": "\\udcff"}', b"[[[", b"{}",
]))))  # fmt: skip
def test_fuzz_batch_reader_yields_posts_or_error_records(lines: list[bytes]) -> None:
    for number, post, error in read_batch_lines(line + b"\n" for line in lines):
        assert (post is None) != (error is None)
        if error is not None:
            assert error.startswith(f"line {number}: ") and "\n" not in error
            json.dumps({"id": f"line-{number}", "error": error}, ensure_ascii=False).encode()
        else:
            assert isinstance(post["text"], str) and post["id"].encode("utf-8")
