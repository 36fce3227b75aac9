"""Each stage server with dynamic batching on and off: throughput and latency at 1, 4 and 16
concurrent callers.

    python benchmarks/batching.py [--seconds 10] [--llm-seconds 60] [--stages llm,mner,ve,vg,seg]

Every stage runs its default backend in a real `StageServer` in this process (gRPC on loopback,
images from a local store); "on" is the default batcher (`max_batch_size` 16, 5 ms queue delay;
a backend whose batch method runs one call at a time, as the MediaPipe and GrabCut defaults of
VE, VG and SEG do, declares `max_batch_size` 1 and gets its calls one by one, without the delay),
"off" is `max_batch_size` 1 (each call alone, as before batching). Callers are threads, each
sending its next call when the last one answered, for ``--seconds`` per setting (the LLM's calls
take seconds each: ``--llm-seconds``). Requests: the
first Twitter-GMNER dev tweets (the sample post's text where absent) for MNER and the LLM's
Expand (two entities each; the generation cache off), the sample image with two entities (VE,
VG) or a person box (SEG). Writes benchmarks/results/batching.json (the stages not run this time
keep their figures) and the README table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.pipeline import posts as benchmark_posts  # noqa: E402
from riveg.core.config import load_settings  # noqa: E402
from riveg.core.stages import STAGES  # noqa: E402
from riveg.core.storage import LocalObjectStore  # noqa: E402
from riveg.serving.client import StageClient  # noqa: E402
from riveg.serving.messages import box_to_proto, entity_to_proto, image_ref  # noqa: E402
from riveg.serving.server import StageServer  # noqa: E402
from riveg.serving.stages import build_stage, stub_class  # noqa: E402
from riveg.v1 import llm_pb2, mner_pb2, seg_pb2, ve_pb2, vg_pb2  # noqa: E402
from tests.conftest import SAMPLE_IMAGE  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "batching.json"
README = ROOT / "README.md"
CALLERS = (1, 4, 16)
ENTITIES = [
    {"text": "Eileen Collins", "type": "PER", "start": 10, "end": 24},
    {"text": "NASA", "type": "ORG", "start": 35, "end": 39},
]


def requests(stage: str, texts: list[str], image_key: str) -> tuple[str, list]:
    """The method and a cycle of requests for one stage."""
    image = image_ref(image_key, 512, 512)
    entities = [entity_to_proto(e) for e in ENTITIES]
    if stage == "mner":
        return "Recognize", [mner_pb2.RecognizeRequest(text=t) for t in texts]
    if stage == "llm":
        return "Expand", [llm_pb2.ExpandRequest(text=t, entities=entities) for t in texts]
    if stage == "ve":
        return "Entail", [ve_pb2.EntailRequest(image=image, entities=entities)]
    if stage == "vg":
        return "Ground", [vg_pb2.GroundRequest(image=image, entities=entities)]
    box = box_to_proto([60.0, 20.0, 460.0, 510.0])
    return "Segment", [seg_pb2.SegmentRequest(image=image, boxes=[box])]


def load(client: StageClient, method: str, cycle: list, callers: int, seconds: float) -> dict:
    """``callers`` threads calling for ``seconds``: calls/s and latency percentiles."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def caller(offset: int) -> None:
        i = offset
        while time.monotonic() < stop:
            started = time.perf_counter()
            client.call(method, cycle[i % len(cycle)], timeout=600)
            with lock:
                latencies.append(time.perf_counter() - started)
            i += callers

    started = time.monotonic()
    threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "calls": len(latencies),
        "calls_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p95_ms": round(latencies[math.ceil(0.95 * len(latencies)) - 1] * 1000, 1),
    }


def bench_stage(stage: str, store_dir: Path, texts: list[str], seconds: float) -> dict:
    store = LocalObjectStore(store_dir)
    key = store.put_bytes("images/sample.jpg", SAMPLE_IMAGE.read_bytes(), "image/jpeg")
    method, cycle = requests(stage, texts, key)
    figures: dict = {"method": method, "seconds": seconds}
    for mode, size in (("on", 16), ("off", 1)):
        settings = load_settings(store_kind="local", store_path=store_dir, llm_cache=False,
                                 **{f"{stage}_max_batch_size": size})  # fmt: skip
        server = StageServer(build_stage(stage, settings, store), settings)
        port = server.start(port=0, host="127.0.0.1")
        client = StageClient(stage, f"127.0.0.1:{port}", stub_class(stage), settings)
        try:
            client.call(method, cycle[0], timeout=600)  # warm
            for callers in CALLERS:
                figures.setdefault(mode, {})[str(callers)] = load(
                    client, method, cycle, callers, seconds
                )
                print(json.dumps({stage: {mode: {callers: figures[mode][str(callers)]}}}),
                      file=sys.stderr)  # fmt: skip
        finally:
            client.close()
            server.stop(grace=0)
    on, off = figures["on"]["16"]["calls_per_s"], figures["off"]["16"]["calls_per_s"]
    figures["ratio_at_16"] = round(on / off, 2) if off else None
    return figures


def table(results: dict) -> str:
    lines = [
        "| stage (method, seconds per setting) | callers | batching on: calls/s, p50 / p95 ms "
        "| off: calls/s, p50 / p95 ms |",
        "| --- | --- | --- | --- |",
    ]
    for stage, figures in results["stages"].items():
        for callers in CALLERS:
            on, off = figures["on"][str(callers)], figures["off"][str(callers)]
            lines.append(
                f"| {stage} ({figures['method']}, {figures.get('seconds', '?')} s) | {callers} "
                f"| {on['calls_per_s']}, "
                f"{on['p50_ms']} / {on['p95_ms']} | {off['calls_per_s']}, {off['p50_ms']} / "
                f"{off['p95_ms']} |"
            )
    ratios = ", ".join(f"{s} {f['ratio_at_16']}x" for s, f in results["stages"].items())
    return "\n".join(lines) + f"\n\nOn/off throughput at 16 callers: {ratios}.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--llm-seconds", type=float, default=60.0)
    parser.add_argument("--stages", default="llm,mner,ve,vg,seg")
    args = parser.parse_args()
    source_posts, source = benchmark_posts(64)
    texts = [post["text"] for post in source_posts]
    earlier = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    results: dict = {"command": "python benchmarks/batching.py --seconds "
                                f"{args.seconds:g} --llm-seconds {args.llm_seconds:g}",
                     "texts": source, "stages": earlier.get("stages", {})}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="riveg-batching-") as work:
        for stage in args.stages.split(","):
            seconds = args.llm_seconds if stage == "llm" else args.seconds
            results["stages"][stage] = bench_stage(stage, Path(work), texts, seconds)
    results["stages"] = {s: results["stages"][s] for s in STAGES if s in results["stages"]}
    RESULT.write_text(json.dumps(results, indent=2) + "\n")
    readme = README.read_text()
    start, end = "<!-- batching-table:start -->", "<!-- batching-table:end -->"
    if start in readme and end in readme:
        before, rest = readme.split(start, 1)
        README.write_text(f"{before}{start}\n{table(results)}{end}{rest.split(end, 1)[1]}")
    print(json.dumps({s: f["ratio_at_16"] for s, f in results["stages"].items()}))


if __name__ == "__main__":
    main()
