"""Input limits: peak memory of `riveg analyze` (embedded) and of each stage server (`riveg up`)
for the worst inputs the limits accept, and what every kind of bad input gets back.

    python benchmarks/limits.py [--skip-distributed] [--skip-bad-inputs] [--jobs 2]

Worst accepted inputs (default `[limits]`): an image of exactly max_image_pixels (4096x4096, the
sample astronaut scaled up; a JPEG of about 1 MB), the same image with noise as a JPEG just under
max_image_bytes, a text of exactly max_text_chars holding max_entities person names (calibrated
with the MNER model), and both limits at once; the bundled sample post is the baseline.

Peak memory is the peak resident set: of each `riveg analyze` process (wait4's ru_maxrss), and of
each `riveg serve <stage>` child of `riveg up` (VmHWM in /proc), after loading and after each
input. The bad inputs go through `riveg analyze` (one process each, `--jobs` at a time) and
through one `riveg batch` (embedded, and with --broker when the distributed part runs).

Writes benchmarks/results/limits.json and limits.md and prints the tables; progress on stderr.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from riveg.core.config import LimitsSettings  # noqa: E402
from riveg.core.stages import STAGES  # noqa: E402
from riveg.orchestration.launcher import port_open  # noqa: E402
from riveg.sample import SAMPLE_IMAGE, SAMPLE_TEXT  # noqa: E402
from tests.support.processes import delete_queues, free_port, spawn_up, stop_up  # noqa: E402

RIVEG = str(Path(sys.executable).parent / "riveg")
BROKER = "amqp://guest:guest@127.0.0.1:5672//"
RESULT_BACKEND = "redis://127.0.0.1:6379/11"  # a database of this benchmark's own
LIMITS = LimitsSettings()
RUN_TIMEOUT_S = 600.0
TIME = "/usr/bin/time"  # GNU time: the peak resident set of one command

FIRST = ["Barack", "Angela", "Emmanuel", "Justin", "Taylor", "Lionel", "Serena", "Elon", "Oprah",
         "Cristiano", "Rihanna", "Roger", "Novak", "Kylian", "Lewis", "Simone"]  # fmt: skip
LAST = ["Obama", "Merkel", "Macron", "Trudeau", "Swift", "Messi", "Williams", "Musk", "Winfrey",
        "Ronaldo", "Fenty", "Federer", "Djokovic", "Mbappe", "Hamilton", "Biles"]  # fmt: skip
FILLER = "and then they all talked about the weather , the traffic and the long day ahead . "


def log(message: str) -> None:
    print(f"[limits {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def base_env(**extra: str) -> dict[str, str]:
    """This environment without RIVEG_* settings, plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIVEG_")}
    env.update(extra)
    return env


# --- running a command and measuring it -------------------------------------------------------


@dataclass
class Run:
    exit: int
    stdout: str
    stderr: str
    wall_s: float
    peak_mib: float
    timed_out: bool

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr

    def message(self) -> str:
        """The one-line error a user sees (the last `Error:` line, else the last stderr line)."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("Error")]
        return (errors or lines or [""])[-1].strip()


def measure(argv: list[Any], env: dict[str, str], timeout: float = RUN_TIMEOUT_S) -> Run:
    """Run a command under GNU time (output to temporary files); its exit status, output, wall
    time and peak resident set ("%M": the maximum RSS of that process alone).

    Not ru_maxrss of this process's own child: a child started by vfork/posix_spawn inherits the
    high-water mark of this (large) process across exec, so the peak would never read lower."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", suffix=".time") as stats,
    ):
        started = time.perf_counter()
        process = subprocess.Popen(
            [TIME, "-f", "%M", "-o", stats.name, *argv], env=env, stdin=subprocess.DEVNULL,
            stdout=out, stderr=err, start_new_session=True,
        )  # fmt: skip
        timed_out = False
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        lines = [line for line in Path(stats.name).read_text().splitlines() if line.strip()]
        peak_kib = int(lines[-1]) if lines and lines[-1].strip().isdigit() else 0
        return Run(
            exit=process.returncode,
            stdout=out.read().decode("utf-8", "backslashreplace"),
            stderr=err.read().decode("utf-8", "backslashreplace"),
            wall_s=round(wall, 2),
            peak_mib=round(peak_kib / 1024, 1),
            timed_out=timed_out,
        )


def proc_memory(pid: int) -> dict[str, float]:
    """VmHWM (peak) and VmRSS (now) of a process, in MiB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = round(int(rest.split()[0]) / 1024, 1)
    return {"peak_mib": values.get("VmHWM", 0.0), "rss_mib": values.get("VmRSS", 0.0)}


def children_of(parent: int) -> dict[int, list[str]]:
    """pid -> argv of each process whose parent is ``parent``."""
    found: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("PPid:")), 0)
        if ppid == parent:
            found[int(entry.name)] = [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]
    return found


# --- inputs -----------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))  # fmt: skip


def limit_images(folder: Path) -> dict[str, Path]:
    """The sample scaled to exactly max_image_pixels (a square of side sqrt(pixels)): a JPEG of
    quality 90, and one with noise whose size is just under max_image_bytes."""
    side = int(LIMITS.max_image_pixels**0.5)
    assert side * side == LIMITS.max_image_pixels, "a square image at the pixel limit"
    with Image.open(SAMPLE_IMAGE) as sample:
        big = np.asarray(sample.convert("RGB").resize((side, side), Image.Resampling.BICUBIC))
    pixels = folder / "limit-pixels.jpg"
    pixels.write_bytes(encode(Image.fromarray(big), "JPEG", quality=90))
    noise = np.random.default_rng(0).normal(0.0, 1.0, big.shape).astype(np.float32)
    target_low, target = LIMITS.max_image_bytes - 256 * 1024, LIMITS.max_image_bytes
    low, high, best = 0.0, 64.0, b""
    for _ in range(20):  # bisect the noise level for a file just under the byte limit
        sigma = (low + high) / 2
        data = encode(Image.fromarray(np.clip(big + noise * sigma, 0, 255).astype(np.uint8)),
                      "JPEG", quality=100)  # fmt: skip
        if len(data) <= target:
            low, best = sigma, data
            if len(data) >= target_low:
                break
        else:
            high = sigma
    big_bytes = folder / "limit-bytes.jpg"
    big_bytes.write_bytes(best)
    return {"pixels": pixels, "bytes": big_bytes}


def names_text(count: int, chars: int) -> str:
    """``count`` person names in a comma list, then lowercase filler, cut to ``chars``."""
    names = " , ".join(f"{FIRST[i % 16]} {LAST[(i * 5 + i // 16) % 16]}" for i in range(count))
    text = names + " met at the station . " + FILLER * (chars // len(FILLER) + 1)
    return text[:chars].rstrip() + "." * (chars - len(text[:chars].rstrip()))


def entity_counter() -> Any:
    """A function text -> number of entities the configured MNER finds (loaded here)."""
    from riveg.core.config import load_settings
    from services.mner.server import MnerServicer

    backend = MnerServicer.create_models(load_settings(), None).current
    backend.load()
    return lambda text: len(backend.recognize([text], [None])[0])


def limit_texts() -> dict[str, dict[str, Any]]:
    """Two texts of exactly max_text_chars: one with max_entities names (the worst accepted,
    calibrated with the MNER model) and one of names only (more than max_entities)."""
    count = entity_counter()
    chars, most = LIMITS.max_text_chars, LIMITS.max_entities
    best: tuple[int, str] | None = None
    for n in range(most, most - 8, -1):
        text = names_text(n, chars)
        found = count(text)
        if found <= most and (best is None or found > best[0]):
            best = (found, text)
        if found == most:
            break
    assert best is not None, "no text with at most max_entities entities"
    names_only = names_text(chars // 10, chars)
    return {
        "at_limit": {"text": best[1], "entities": best[0]},
        "names_only": {"text": names_only, "entities": count(names_only)},
    }


# --- peak memory ------------------------------------------------------------------------------


def worst_inputs(images: dict[str, Path], texts: dict[str, dict[str, Any]]) -> list[dict]:
    at_limit = texts["at_limit"]["text"]
    return [
        {"key": "baseline", "name": "baseline (sample post)", "text": SAMPLE_TEXT,
         "image": SAMPLE_IMAGE},
        {"key": "pixels", "name": "image at the pixel limit", "text": SAMPLE_TEXT,
         "image": images["pixels"]},
        {"key": "bytes", "name": "image at the byte and pixel limits", "text": SAMPLE_TEXT,
         "image": images["bytes"]},
        {"key": "text", "name": "text at the char and entity limits", "text": at_limit,
         "image": SAMPLE_IMAGE},
        {"key": "all", "name": "all limits at once", "text": at_limit, "image": images["bytes"]},
    ]  # fmt: skip


def describe_input(item: dict) -> dict[str, Any]:
    path: Path = item["image"]
    with Image.open(path) as image:
        size = image.size
    return {"key": item["key"], "name": item["name"], "text_chars": len(item["text"]),
            "image": f"{size[0]}x{size[1]} {path.suffix[1:].upper()}",
            "image_bytes": path.stat().st_size}  # fmt: skip


def analyze_outcome(run: Run) -> dict[str, Any]:
    """exit, wall, peak and the entity counts of one `riveg analyze --json` run."""
    outcome: dict[str, Any] = {"exit": run.exit, "wall_s": run.wall_s, "peak_mib": run.peak_mib}
    if run.exit == 0:
        result = json.loads(run.stdout.strip().splitlines()[-1])
        entities = result.get("entities", [])
        outcome["entities"] = len(entities)
        outcome["boxes"] = sum(1 for e in entities if e.get("box"))
        outcome["masks"] = sum(1 for e in entities if e.get("mask"))
        outcome["timings_ms"] = result.get("timings_ms", {})
    else:
        outcome["error"] = run.message()
    outcome["traceback"] = run.traceback
    return outcome


def embedded_memory(inputs: list[dict], work: Path) -> list[dict]:
    rows = []
    for index, item in enumerate(inputs):
        env = base_env(RIVEG_STORE_PATH=str(work / f"store-{index}"))  # a cold LLM cache
        argv = [RIVEG, "analyze", "--text", item["text"], "--image", str(item["image"]), "--json"]
        run = measure(argv, env)
        rows.append({**describe_input(item), **analyze_outcome(run)})
        log(f"embedded analyze, {item['name']}: {rows[-1]}")
        shutil.rmtree(work / f"store-{index}", ignore_errors=True)
    return rows


def server_pids(up_pid: int, ready: dict) -> dict[str, int]:
    """stage -> pid of the `riveg serve <stage>` children of `riveg up`."""
    pids: dict[str, int] = {}
    for pid, argv in children_of(up_pid).items():
        if "serve" in argv and argv.index("serve") + 1 < len(argv):
            stage = argv[argv.index("serve") + 1]
            if stage in STAGES:
                pids[stage] = pid
    for stage in STAGES:  # cross-check with the pids `riveg up` reported
        reported = ready.get("processes", {}).get(f"serve-{stage}")
        if stage not in pids and reported:
            pids[stage] = reported
    return pids


def worker_pids(up_pid: int) -> dict[str, int]:
    found = {}
    for pid, argv in children_of(up_pid).items():
        if "worker" in argv and argv.index("worker") + 1 < len(argv):
            found[argv[argv.index("worker") + 1]] = pid
    return found


def redis_keys() -> set[bytes]:
    import redis

    return set(redis.Redis.from_url(RESULT_BACKEND).keys("*"))


def delete_redis_keys(keep: set[bytes]) -> int:
    import redis

    client = redis.Redis.from_url(RESULT_BACKEND)
    new = [k for k in client.keys("*") if k not in keep]
    if new:
        client.delete(*new)
    return len(new)


def distributed(inputs: list[dict], work: Path, bad: dict | None, jobs: int) -> dict[str, Any]:
    """`riveg up`; each server's peak after loading and after each worst input submitted with
    `riveg analyze --broker`; then, when given, the bad inputs through `riveg analyze --broker`
    and `riveg batch --broker`, and each server's peak after them."""
    if not (port_open("127.0.0.1", 5672) and port_open("127.0.0.1", 6379)):
        raise SystemExit("distributed mode needs RabbitMQ and Redis on loopback")
    prefix = f"riveg-limits-{uuid.uuid4().hex[:6]}"
    env = base_env(
        RIVEG_BROKER_URL=BROKER, RIVEG_BROKER_QUEUE_PREFIX=prefix,
        RIVEG_BROKER_RESULT_BACKEND=RESULT_BACKEND,
        RIVEG_STORE_KIND="s3", RIVEG_S3_ENDPOINT=f"127.0.0.1:{free_port()}",
        **{f"RIVEG_{s.upper()}_ADDR": f"127.0.0.1:{free_port()}" for s in STAGES},
    )  # fmt: skip
    keys_before = redis_keys()
    log(f"starting riveg up (queue prefix {prefix})")
    process, ready = spawn_up(env, work / "up", concurrency=2)
    report: dict[str, Any] = {"startup_s": ready.get("startup_s"), "queue_prefix": prefix}
    try:
        pids = server_pids(process.pid, ready)
        workers = worker_pids(process.pid)
        log(f"servers {pids}, workers {workers}")
        servers: dict[str, dict[str, Any]] = {
            s: {"pid": pid, "after_load": proc_memory(pid), "after_input": {}}
            for s, pid in pids.items()
        }
        submissions = []
        for item in inputs:
            argv = [RIVEG, "analyze", "--broker", BROKER, "--text", item["text"], "--image",
                    str(item["image"]), "--json", "--timeout", "600"]  # fmt: skip
            run = measure(argv, env)
            submissions.append({**describe_input(item), **analyze_outcome(run)})
            for stage, pid in pids.items():
                servers[stage]["after_input"][item["key"]] = proc_memory(pid)
            log(f"distributed analyze, {item['name']}: {submissions[-1]}")
        for stage in servers:
            first, last = servers[stage]["after_load"], servers[stage]["after_input"]
            servers[stage]["peak_mib"] = max([first["peak_mib"]]
                                             + [m["peak_mib"] for m in last.values()])  # fmt: skip
        report["servers"] = servers
        report["analyze"] = submissions
        if bad is not None:
            log("bad inputs through riveg analyze --broker")
            report["bad_analyze"] = bad_analyze(bad["cases"], work / "analyze", jobs, env, True)
            log("bad-input batch through the broker")
            report["bad_batch"] = run_bad_batch(bad["batch"], env, ["--broker", BROKER])
            for stage, pid in pids.items():
                servers[stage]["after_bad_inputs"] = proc_memory(pid)
        report["workers"] = {q: proc_memory(pid) for q, pid in workers.items()}
    finally:
        stop_up(process)
        delete_queues(BROKER, prefix)
        deleted = delete_redis_keys(keys_before)
        log(f"riveg up stopped; queues {prefix}.* deleted, {deleted} result keys deleted")
    return report


# --- bad inputs -------------------------------------------------------------------------------


def bad_images(folder: Path, limit_bytes_image: Path) -> dict[str, tuple[str, Path]]:
    """case -> (description, file) of every image case, written into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(SAMPLE_IMAGE) as opened:
        sample = opened.convert("RGB")
    gray16 = (np.asarray(sample.convert("L")).astype(np.uint16) * 257).astype(np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    palette = sample.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    over = limit_bytes_image.read_bytes()
    over += b"\0" * (LIMITS.max_image_bytes + 1 - len(over))  # one byte over: trailing padding
    svg = (b'<svg xmlns="http://www.w3.org/2000/svg" width="512" height="512">'
           b'<circle cx="256" cy="256" r="200" fill="red"/></svg>')  # fmt: skip
    cases: dict[str, tuple[str, bytes]] = {
        "zero-bytes": ("zero bytes (empty file)", b""),
        "truncated": ("truncated JPEG (first 5,000 bytes of the sample)",
                      SAMPLE_IMAGE.read_bytes()[:5000]),
        "svg": ("SVG (text, not pixels)", svg),
        "text-file": ("a text file named .jpg", b"these bytes are text, not pixels\n"),
        "one-pixel": ("1x1 PNG", encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")),
        "cmyk": ("CMYK JPEG (the sample)", encode(sample.convert("CMYK"), "JPEG", quality=90)),
        "gif": ("GIF (the sample)", encode(sample, "GIF")),
        "webp": ("WebP (the sample)", encode(sample, "WEBP", quality=90)),
        "exif-rotated": ("JPEG with EXIF orientation 6 (the sample)",
                         encode(sample, "JPEG", quality=90, exif=exif.tobytes())),
        "gray16": ("16-bit grayscale PNG (the sample)", encode(Image.fromarray(gray16), "PNG")),
        "palette": ("palette PNG with transparency (the sample, 64 colours)",
                    encode(palette, "PNG", transparency=0)),
        "rgba": ("RGBA PNG, half transparent (the sample)",
                 encode(Image.merge("RGBA", (*sample.split(), Image.new("L", sample.size, 128))),
                        "PNG")),
        "bomb": ("PNG header claiming 30000x30000 (decompression bomb)",
                 png_header(30000, 30000)),
        "just-over-pixels": ("PNG header claiming 4097x4097 (one row and column over)",
                             png_header(4097, 4097)),
        "over-bytes": (f"JPEG of {len(over):,} bytes (1 byte over the limit)", over),
    }  # fmt: skip
    written = {}
    for name, (description, data) in cases.items():
        suffix = {"svg": ".svg", "gif": ".gif", "webp": ".webp"}.get(name, ".png")
        if name in ("truncated", "text-file", "cmyk", "exif-rotated", "over-bytes", "zero-bytes"):
            suffix = ".jpg"
        path = folder / f"{name}{suffix}"
        path.write_bytes(data)
        written[name] = (description, path)
    return written


TEXT_CASES: dict[str, tuple[str, str | bytes]] = {
    "over-chars": (f"text of {LIMITS.max_text_chars + 1} characters",
                   "x" * (LIMITS.max_text_chars + 1)),
    "empty": ("empty text", ""),
    "whitespace": ("whitespace-only text", " \t\n "),
    "emoji": ("emoji text", "🚀🚀 Eileen Collins 👩‍🚀 at NASA 🇺🇸 today 🎉"),
    "rtl": ("RTL text (Arabic and Hebrew)", "مرحبا Eileen Collins في NASA שלום"),
    "control": ("control characters (ESC, BEL, RLO, zero-width)",
                "\x1b[31mEileen Collins\x07 at\u202e NASA\u200b in Houston\x1b[0m"),
    "invalid-utf8": ("invalid UTF-8 byte (0xE9) in --text", b"caf\xe9 with Eileen Collins"),
}  # fmt: skip


AnalyzeCase = tuple[str, str, list[bytes]]  # case, description, [text, image, *options]


ODD_IDS = {
    "id-space": ("with a space ('tweet 1')", "tweet 1"),
    "id-slash": ("with a slash ('2024/05/1')", "2024/05/1"),
    "id-non-ascii": ("not ASCII ('café-1')", "café-1"),
}


def analyze_cases(images: dict[str, tuple[str, Path]], texts: dict[str, dict[str, Any]],
                  work: Path) -> list[AnalyzeCase]:  # fmt: skip
    """(case, description, [text, image path, *options]): each image case with the sample
    text, each text case with the sample image, two --image paths that are not files, and
    --id values with characters an object key must escape."""
    cases: list[AnalyzeCase] = []
    sample_text = SAMPLE_TEXT.encode()
    for name, (description, path) in images.items():
        cases.append((name, description, [sample_text, bytes(path)]))
    text_cases = {**TEXT_CASES, "names-only": (
        f"{LIMITS.max_text_chars} characters of names only "
        f"({texts['names_only']['entities']} entities)", texts["names_only"]["text"])}  # fmt: skip
    for name, (description, text) in text_cases.items():
        raw = text if isinstance(text, bytes) else text.encode()
        cases.append((name, description, [raw, bytes(SAMPLE_IMAGE)]))
    work.mkdir(parents=True, exist_ok=True)
    cases.append(("image-is-dir", "--image is a directory", [sample_text, bytes(work)]))
    cases.append(("image-missing", "--image does not exist",
                  [sample_text, bytes(work / "no-such.jpg")]))  # fmt: skip
    for name, (description, post_id) in ODD_IDS.items():
        cases.append((name, f"--id {description}",
                      [sample_text, bytes(SAMPLE_IMAGE), b"--id", post_id.encode()]))  # fmt: skip
    return cases


def bad_analyze(cases: list[AnalyzeCase], work: Path, jobs: int, env: dict[str, str],
                broker: bool) -> list[dict]:  # fmt: skip
    """Each case through `riveg analyze --json` (embedded, or --broker), ``jobs`` at a time."""
    work.mkdir(parents=True, exist_ok=True)

    def one(case: AnalyzeCase) -> dict:
        name, description, (text, image, *options) = case
        store = work / f"store-{name}"
        argv = [RIVEG.encode(), b"analyze", b"--text", text, b"--image", image, b"--json",
                *options,
                *([b"--broker", BROKER.encode()] if broker else [])]  # fmt: skip
        run = measure(argv, {**env, "RIVEG_STORE_PATH": str(store)})
        row = {"case": name, "input": description, "exit": run.exit, "wall_s": run.wall_s,
               "traceback": run.traceback, "store_written": store.exists()}  # fmt: skip
        if run.exit == 0:
            entities = json.loads(run.stdout.strip().splitlines()[-1]).get("entities", [])
            row["message"] = f"accepted: {len(entities)} entities"
            row["boxes"] = sum(1 for e in entities if e.get("box"))
        else:
            row["message"] = run.message()
            row["stdout_empty"] = not run.stdout.strip()
        if run.traceback:
            row["stderr_tail"] = run.stderr[-2000:]
        log(f"analyze {name}: exit {run.exit}, {row['message'][:160]}")
        return row

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, cases))


def bad_batch_input(
    images: dict[str, tuple[str, Path]], texts: dict[str, dict[str, Any]], work: Path
) -> dict[str, Any]:
    """An images folder and a JSONL file with one line per bad (or accepted) post."""
    folder = work / "batch" / "images"
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE_IMAGE, folder / "astronaut.jpg")
    shutil.copy(SAMPLE_IMAGE, work / "batch" / "outside.jpg")
    link = folder / "link-out.jpg"
    if not link.is_symlink():
        link.symlink_to(work / "batch" / "outside.jpg")
    for _, path in images.values():
        shutil.copy(path, folder / path.name)
    outside = str(work / "batch" / "outside.jpg")

    def post(post_id: str, **fields: Any) -> bytes:
        fields = {"id": post_id, "text": "Astronaut Eileen Collins at NASA in Houston .",
                  "image": "astronaut.jpg", **fields}  # fmt: skip
        return json.dumps(fields).encode()

    lines: list[tuple[str, str, bytes]] = [
        ("good", "the sample post", post("good", text=SAMPLE_TEXT)),
    ]
    for name, (description, path) in images.items():
        lines.append((name, description, post(name, image=path.name)))
    for name, (description, text) in TEXT_CASES.items():
        if isinstance(text, bytes):
            raw = b'{"id": "%s", "text": "%s", "image": "astronaut.jpg"}' % (name.encode(), text)
            lines.append((name, "invalid UTF-8 byte (0xE9) in a JSONL line", raw))
        else:
            lines.append((name, description, post(name, text=text)))
    names_only = texts["names_only"]
    lines += [
        ("names-only", f"{LIMITS.max_text_chars} characters of names only "
         f"({names_only['entities']} entities)", post("names-only", text=names_only["text"])),
        ("nul-text", "NUL character in the text (JSON \\u0000)",
         post("nul-text", text="Eileen Collins\u0000 at NASA")),
        ("surrogate", "lone surrogate in the text (JSON \\ud800)",
         b'{"id": "surrogate", "text": "Eileen \\ud800 Collins", "image": "astronaut.jpg"}'),
        ("malformed", "malformed JSON (missing closing brace)",
         b'{"id": "malformed", "text": "Obama", "image": "astronaut.jpg"'),
        ("not-object", "a JSON array, not an object", b'["Obama", "astronaut.jpg"]'),
        ("nested", "JSON nested 100,000 deep", b"[" * 100_000),
        ("no-text", "missing 'text'", b'{"id": "no-text", "image": "astronaut.jpg"}'),
        ("no-image", "missing 'image'", b'{"id": "no-image", "text": "Eileen Collins at NASA"}'),
        ("no-id", "missing 'id' (accepted: the line number is the id)",
         b'{"text": "Eileen Collins at NASA", "image": "astronaut.jpg"}'),
        ("text-int", "'text' is a number", post("text-int", text=42)),
        ("image-int", "'image' is a number", post("image-int", image=5)),
        ("image-list", "'image' is a list", post("image-list", image=["astronaut.jpg"])),
        ("id-object", "'id' is an object", post({"a": 1}, text="Eileen Collins at NASA")),  # type: ignore[arg-type]
        *[(name, f"'id' {description}", post(post_id)) for name, (description, post_id)
          in ODD_IDS.items()],
        ("dup", "duplicate id (first of two)", post("dup")),
        ("dup", "duplicate id (second of two)", post("dup", text="Eileen Collins at NASA .")),
        ("dotdot", "path escape '../outside.jpg'", post("dotdot", image="../outside.jpg")),
        ("dotdot-sub", "path escape 'sub/../../outside.jpg'",
         post("dotdot-sub", image="sub/../../outside.jpg")),
        ("absolute", "absolute path to a real image", post("absolute", image=outside)),
        ("etc-hostname", "absolute path '/etc/hostname'",
         post("etc-hostname", image="/etc/hostname")),
        ("symlink-out", "symbolic link leading outside --images",
         post("symlink-out", image="link-out.jpg")),
        ("missing-file", "image file that does not exist", post("missing-file", image="no.jpg")),
        ("directory", "image path is a directory", post("directory", image="sub")),
        ("empty-image", "empty 'image'", post("empty-image", image="")),
        ("nul-path", "NUL in the image path", post("nul-path", image="astro\u0000naut.jpg")),
    ]  # fmt: skip
    input_path = work / "batch" / "posts.jsonl"
    input_path.write_bytes(b"".join(raw + b"\n" for _, _, raw in lines))
    return {"lines": lines, "input": input_path, "images": folder, "work": work / "batch"}


def run_bad_batch(batch: dict[str, Any], env: dict[str, str], extra: list[str]) -> dict:
    """One `riveg batch` over the bad-input file; per line: the error or 'accepted'."""
    out = batch["work"] / f"out-{uuid.uuid4().hex[:6]}.jsonl"
    store = batch["work"] / f"store-{uuid.uuid4().hex[:6]}"
    env = {"RIVEG_STORE_PATH": str(store), **env}
    argv = [RIVEG, "batch", str(batch["input"]), "--images", str(batch["images"]),
            "--out", str(out), "--json", "--timeout", "600", *extra]  # fmt: skip
    run = measure(argv, env)
    records: dict[str, list[dict]] = {}
    for line in out.read_text(encoding="utf-8").splitlines() if out.exists() else []:
        record = json.loads(line)
        records.setdefault(str(record["id"]), []).append(record)
    rows, seen = [], {}
    for number, (name, description, raw) in enumerate(batch["lines"], 1):
        try:
            parsed = json.loads(raw)
        except (ValueError, RecursionError):
            parsed = None
        post_id = str(parsed["id"]) if isinstance(parsed, dict) and "id" in parsed else name
        candidates = records.get(post_id) or records.get(f"line-{number}") or []
        index = seen.get(post_id, 0)
        seen[post_id] = index + 1
        record = candidates[index] if index < len(candidates) else None
        if record is None:
            message = "no record in the output"
        elif "error" in record:
            message = record["error"]
        else:
            message = f"accepted: {len(record.get('entities', []))} entities"
        rows.append({"line": number, "case": name, "input": description, "message": message})
    summary = {}
    if run.stdout.strip():
        try:
            summary = json.loads(run.stdout.strip().splitlines()[-1])
            summary.pop("out", None)
        except json.JSONDecodeError:
            summary = {"stdout": run.stdout[-500:]}
    images = store / "images"
    uploaded = sorted(p.name for p in images.rglob("*") if p.is_file())
    report = {"exit": run.exit, "wall_s": run.wall_s, "peak_mib": run.peak_mib,
              "traceback": run.traceback, "summary": summary, "rows": rows,
              "images_uploaded": len(uploaded) if "--broker" not in extra else None}  # fmt: skip
    if run.traceback or run.exit not in (0, 1):
        report["stderr_tail"] = run.stderr[-3000:]
    return report


# --- report -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    meminfo = Path("/proc/meminfo").read_text().splitlines()[0].split()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    return {"cpus": os.cpu_count(), "memory_gib": round(int(meminfo[1]) / 1024**2, 1),
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": version("torch"),
            "pillow": version("pillow"), "riveg": version("riveg-serve"), "commit": commit,
            "tree_modified": bool(dirty)}  # fmt: skip


def table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def slow_steps(timings: dict[str, float], count: int = 3) -> str:
    """The slowest pipeline steps, e.g. "expand 95.1 s, seg 3.2 s"."""
    top = sorted(timings.items(), key=lambda kv: -kv[1])[:count]
    return ", ".join(f"{step} {ms / 1000:.1f} s" for step, ms in top)


def outcome_cell(row: dict) -> str:
    if row["exit"] != 0:
        return f"exit {row['exit']}: {row.get('error', '')}"
    return f"{row['entities']} / {row['boxes']} / {row['masks']}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    limits = report["limits"]
    parts = [
        "# Input limits: peak memory and bad inputs\n",
        f"`python benchmarks/limits.py` on {m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB; "
        f"Python {m['python']}, torch {m['torch']}, Pillow {m['pillow']}; commit {m['commit']}"
        f"{' (working tree modified)' if m['tree_modified'] else ''}; {report['seconds']} s.\n",
        f"Limits (defaults of `[limits]`): max_image_bytes {limits['max_image_bytes']:,}, "
        f"max_image_pixels {limits['max_image_pixels']:,} (4096x4096), max_text_chars "
        f"{limits['max_text_chars']}, max_entities {limits['max_entities']}.\n",
        "Peak = peak resident set: of the `riveg analyze` process (GNU time %M), and of each "
        "`riveg serve <stage>` process of `riveg up` (VmHWM), in MiB. The text at the limits is "
        f"{limits['max_text_chars']} characters holding {report['texts']['at_limit']['entities']}"
        " person names (the MNER finds exactly that many), padded with lowercase words; the "
        "images are the sample scaled to 4096x4096.\n",
        table(["input", "text chars", "image", "image bytes"],
              [[i["name"], i["text_chars"], i["image"], f"{i['image_bytes']:,}"]
               for i in report["inputs"]]),
    ]  # fmt: skip
    if "embedded" in report:
        base = report["embedded"][0]["peak_mib"]
        parts.append("\n## `riveg analyze` (embedded: every stage in one process)\n")
        parts.append("Each run a fresh process with an empty store (so an empty LLM cache).\n")
        parts.append(table(
            ["input", "entities / boxes / masks", "wall s", "slowest steps", "peak MiB",
             "vs baseline"],
            [[r["name"], outcome_cell(r), r["wall_s"], slow_steps(r.get("timings_ms", {})),
              r["peak_mib"], f"{r['peak_mib'] - base:+.0f}"] for r in report["embedded"]],
        ))  # fmt: skip
    if "distributed" in report:
        dist = report["distributed"]
        keys = [r["key"] for r in dist["analyze"]]
        bad = any("after_bad_inputs" in v for v in dist["servers"].values())
        parts.append("\n## Stage servers (`riveg up`), peak RSS (VmHWM) in MiB\n")
        cached = "text" in keys and "all" in keys and keys.index("text") < keys.index("all")
        parts.append(
            f"Started in {dist['startup_s']} s. The peak so far after loading, then after each "
            "input submitted in turn with `riveg analyze --broker`"
            + ("; `all` reuses the expansions `text` cached" if cached else "")
            + (", then after all the bad inputs below" if bad else "")
            + ".\n"
        )
        parts.append(table(
            ["server", "after load", *keys, *(["after bad inputs"] if bad else []),
             "worst input vs load"],
            [[s, v["after_load"]["peak_mib"],
              *[v["after_input"][k]["peak_mib"] for k in keys],
              *([v["after_bad_inputs"]["peak_mib"]] if bad else []),
              f"{v['peak_mib'] - v['after_load']['peak_mib']:+.0f}"]
             for s, v in dist["servers"].items()],
        ))  # fmt: skip
        parts.append("\n\nSubmissions:\n")
        parts.append(table(
            ["input", "key", "entities / boxes / masks", "wall s", "slowest steps"],
            [[r["name"], r["key"], outcome_cell(r), r["wall_s"],
              slow_steps(r.get("timings_ms", {}))] for r in dist["analyze"]],
        ))  # fmt: skip
    if "bad_analyze" in report:
        mode = report["bad_analyze_mode"]
        parts.append(f"\n\n## Bad inputs through `riveg analyze` ({mode})\n")
        parts.append("Image cases with the sample text; text cases with the sample image. "
                     "Traceback: whether stderr held one.\n")  # fmt: skip
        parts.append(table(
            ["input", "exit", "message", "traceback"],
            [[r["input"], r["exit"], r["message"], "yes" if r["traceback"] else "no"]
             for r in report["bad_analyze"]],
        ))  # fmt: skip
    batches = [(k, t) for k, t in (("bad_batch", "embedded"), ("bad_batch_broker", "--broker"))
               if k in report]  # fmt: skip
    if batches:
        parts.append("\n\n## Bad inputs through one `riveg batch` JSONL file\n")
        for key, title in batches:
            b = report[key]
            parts.append(f"- {title}: exit {b['exit']}, traceback "
                         f"{'yes' if b['traceback'] else 'no'}, {b['summary']}")  # fmt: skip
        header = ["line", "input", *(f"{title}" for _, title in batches)]
        rows = []
        for index, row in enumerate(report[batches[0][0]]["rows"]):
            cells = [row["message"]]
            if len(batches) > 1:
                other = report[batches[1][0]]["rows"][index]["message"]
                cells.append("same" if other == row["message"] else other)
            rows.append([row["line"], row["input"], *cells])
        parts.append("")
        parts.append(table(header, rows))
    return "\n".join(parts) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip-distributed", action="store_true", help="embedded mode only")
    parser.add_argument("--skip-bad-inputs", action="store_true", help="peak memory only")
    parser.add_argument("--embedded-inputs", default="baseline,pixels,bytes,all",
                        help="of baseline,pixels,bytes,text,all")  # fmt: skip
    parser.add_argument("--distributed-inputs", default="baseline,pixels,bytes,all")
    parser.add_argument("--jobs", type=int, default=2, help="bad-input analyze runs at a time")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/limits.json")
    args = parser.parse_args()
    started = time.perf_counter()
    report: dict[str, Any] = {"machine": machine(), "limits": LIMITS.model_dump()}
    phases: dict[str, float] = {}

    def phase(name: str, since: float) -> float:
        phases[name] = round(time.perf_counter() - since, 1)
        return time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="riveg-limits-") as tmp:
        work = Path(tmp)
        since = time.perf_counter()
        log("building the inputs at the limits")
        images = limit_images(work)
        texts = limit_texts()
        log(f"texts: {texts['at_limit']['entities']} and {texts['names_only']['entities']} "
            f"entities in {LIMITS.max_text_chars} characters")  # fmt: skip
        report["texts"] = texts
        inputs = worst_inputs(images, texts)
        report["inputs"] = [describe_input(i) for i in inputs]
        since = phase("inputs", since)
        chosen = set(args.embedded_inputs.split(","))
        report["embedded"] = embedded_memory(
            [i for i in inputs if i["key"] in chosen], work / "embedded"
        )
        since = phase("embedded", since)
        bad = None
        if not args.skip_bad_inputs:
            cases = bad_images(work / "bad", images["bytes"])
            bad = {"cases": analyze_cases(cases, texts, work / "analyze"),
                   "batch": bad_batch_input(cases, texts, work)}  # fmt: skip
            log("bad-input batch (embedded)")
            report["bad_batch"] = run_bad_batch(bad["batch"], base_env(), [])
            if args.skip_distributed:
                report["bad_analyze_mode"] = "embedded"
                report["bad_analyze"] = bad_analyze(
                    bad["cases"], work / "analyze", args.jobs, base_env(), False
                )
            since = phase("bad_inputs_embedded", since)
        if not args.skip_distributed:
            chosen = set(args.distributed_inputs.split(","))
            dist_inputs = [i for i in inputs if i["key"] in chosen]
            report["distributed"] = distributed(dist_inputs, work / "distributed", bad, args.jobs)
            if bad is not None:
                report["bad_analyze_mode"] = "--broker, against the `riveg up` above"
                report["bad_analyze"] = report["distributed"].pop("bad_analyze")
                report["bad_batch_broker"] = report["distributed"].pop("bad_batch")
            since = phase("distributed", since)
    report["phases_s"] = phases
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    text = markdown(report)
    args.out.with_suffix(".md").write_text(text)
    print(text)
    log(f"done in {report['seconds']} s {phases}: {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
