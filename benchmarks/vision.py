"""Vision stages: latency per image of each offline default backend, model-swap time, and failed
calls while a VG model is swapped under streaming load.

    python benchmarks/vision.py [--repeats 10] [--out benchmarks/results/vision_latency.json]

Latency: the backend's batch call on one image (all its entities: the sample post's PER, ORG
and LOC; SEG: the person's box), median and p90 over --repeats calls after one warm-up, on
samples/astronaut.jpg (512 x 512) and a 1024 x 768 resize of it. Swap: a VG server serving
person@1 (MediaPipe) swaps to person@2 (a fresh MediaPipe load) and then to a tiny OWLv2 from a
local model store, while 4 client threads call Ground without pause.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from riveg.core.config import load_settings  # noqa: E402
from riveg.core.images import image_array  # noqa: E402
from riveg.core.storage import LocalObjectStore, open_store  # noqa: E402
from riveg.sample import SAMPLE_IMAGE, SAMPLE_TEXT  # noqa: E402
from riveg.serving.client import StageClient  # noqa: E402
from riveg.serving.messages import entity_to_proto, image_ref  # noqa: E402
from riveg.serving.modelstore import ModelRef, ModelStore  # noqa: E402
from riveg.serving.server import StageServer  # noqa: E402
from riveg.v1 import common_pb2, vg_pb2, vg_pb2_grpc  # noqa: E402


def _entity(text: str, kind: str) -> dict:
    start = SAMPLE_TEXT.index(text)
    return {"text": text, "start": start, "end": start + len(text), "type": kind}


ENTITIES = [
    _entity("Eileen Collins", "PER"),
    _entity("NASA", "ORG"),
    _entity("Houston", "LOC"),
]


def _timed(call, repeats: int) -> dict[str, float]:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 1),
        "p90_ms": round(times[min(len(times) - 1, int(0.9 * len(times)))], 1),
    }


def latency(repeats: int) -> dict[str, dict]:
    """Per-image latency of the default backends (and the trained VE default candidate)."""
    from services.seg.backends import SEG_BACKENDS
    from services.ve.backends import VE_BACKENDS
    from services.vg.backends import VG_BACKENDS

    settings = load_settings()
    small = image_array(SAMPLE_IMAGE.read_bytes())
    large = cv2.resize(small, (1024, 768), interpolation=cv2.INTER_LINEAR)
    results: dict[str, dict] = {}
    backends = [
        ("ve", "person", VE_BACKENDS),
        ("ve", "groundability", VE_BACKENDS),
        ("vg", "person", VG_BACKENDS),
        ("seg", "grabcut", SEG_BACKENDS),
        ("seg", "selfie", SEG_BACKENDS),
    ]
    for stage, key, registry in backends:
        backend = registry.create(key, settings)
        started = time.perf_counter()
        backend.load()
        load_s = round(time.perf_counter() - started, 2)
        row: dict = {"model": backend.model, "load_s": load_s}
        for label, image in (("512x512", small), ("1024x768", large)):
            if stage == "seg":
                h, w = image.shape[:2]
                box = [0.0, 15.0 * h / 512, float(w), float(h)]
                row[label] = _timed(lambda b=backend, i=image, x=box: b.segment(i, [x]), repeats)
            elif stage == "ve":
                row[label] = _timed(lambda b=backend, i=image: b.entail(i, ENTITIES), repeats)
            else:
                row[label] = _timed(lambda b=backend, i=image: b.ground(i, ENTITIES), repeats)
        results[f"{stage}/{key}"] = row
        print(f"{stage}/{key}: {json.dumps(row)}", file=sys.stderr)
    return results


def swap(folder: Path) -> dict:
    """Swap a streaming VG server's model twice; calls, failures and times."""
    from riveg.serving.stages import build_stage
    from tests.support.tiny import save_tiny_owl

    models = ModelStore(LocalObjectStore(folder / "models"), folder / "cache", prefix="")
    models.publish("vg", ModelRef("owlv2-tiny", "1"), save_tiny_owl(folder / "owl"), "owl")
    settings = load_settings(
        store_kind="local", store_path=folder / "store", models_store_path=folder / "models",
        vg_model="person@1",
    )  # fmt: skip
    store = open_store(settings)
    key = store.put_bytes("images/bench", SAMPLE_IMAGE.read_bytes())
    server = StageServer(build_stage("vg", settings, store), settings)
    port = server.start(port=0, host="127.0.0.1")
    client = StageClient("vg", f"127.0.0.1:{port}", vg_pb2_grpc.VgServiceStub, settings)
    request = vg_pb2.GroundRequest(
        image=image_ref(key, 512, 512), entities=[entity_to_proto(e) for e in ENTITIES]
    )
    stop = threading.Event()
    answered: dict[str, int] = {}
    failures: list[str] = []
    lock = threading.Lock()

    def stream() -> None:
        while not stop.is_set():
            try:
                model = client.call("Ground", request, timeout=60).model
                with lock:
                    answered[model] = answered.get(model, 0) + 1
            except Exception as exc:  # counted and reported
                failures.append(repr(exc))

    threads = [threading.Thread(target=stream) for _ in range(4)]
    swaps = []
    try:
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        for target in ("person@2", "owlv2-tiny@1"):
            started = time.perf_counter()
            reply = client.admin.Load(common_pb2.LoadModelRequest(model=target), timeout=120)
            swaps.append(
                {
                    "to": reply.model,
                    "from": reply.previous,
                    "load_and_warm_s": round(reply.load_s, 3),
                    "switch_ms": round(reply.swap_ms, 4),
                    "admin_call_s": round(time.perf_counter() - started, 3),
                }
            )
            time.sleep(2.0)
        started = time.perf_counter()
        back = client.admin.Rollback(common_pb2.RollbackRequest(), timeout=30)
        rollback_ms = round((time.perf_counter() - started) * 1000, 2)
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        client.close()
        server.stop(grace=1.0)
    return {
        "client_threads": 4,
        "calls": sum(answered.values()) + len(failures),
        "failed_calls": len(failures),
        "answered_by": answered,
        "swaps": swaps,
        "rollback": {"to": back.model, "admin_call_ms": rollback_ms},
        "failures": failures[:5],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/vision_latency.json")
    args = parser.parse_args()
    result = {
        "machine": f"{os.cpu_count()} CPU cores (shared), no GPU",
        "latency_per_image": latency(args.repeats),
    }
    with tempfile.TemporaryDirectory() as tmp:
        result["swap_under_load"] = swap(Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
