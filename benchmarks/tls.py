"""TLS overhead on a stage call: p50/p90 latency of the same calls over plaintext, TLS and mutual
TLS, on loopback, to an in-process seg server (grabcut) with certificates generated here.

    python benchmarks/tls.py [--calls 200]

Two calls, interleaved across the modes: ``ModelAdmin/Current`` (no work: the transport
alone) and ``SegService/Segment`` on the bundled sample with one box (a real stage call).
Channels are reused, as the workers' are; the first call of each (with the handshake) is timed
apart. Writes
benchmarks/results/tls.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from tqdm import tqdm  # noqa: E402

from riveg.core.config import load_settings  # noqa: E402
from riveg.core.storage import open_store  # noqa: E402
from riveg.sample import SAMPLE_IMAGE  # noqa: E402
from riveg.serving.client import StageClient  # noqa: E402
from riveg.serving.messages import box_to_proto, image_ref  # noqa: E402
from riveg.serving.server import StageServer  # noqa: E402
from riveg.serving.stages import build_stage, stub_class  # noqa: E402
from riveg.v1 import common_pb2, seg_pb2  # noqa: E402
from tests.support.certs import CertificateAuthority  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, in milliseconds rounded to 0.001."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)


class Endpoint:
    """A seg server and a client of it with one mode's [grpc] settings on both ends."""

    def __init__(self, mode: str, grpc_settings: dict, folder: Path) -> None:
        flat = {f"grpc_{k}": v for k, v in grpc_settings.items()}
        settings = load_settings(store_kind="local", store_path=folder / "store",
                                 log_level="WARNING", **flat)  # fmt: skip
        store = open_store(settings)
        key = store.put_bytes("images/sample", SAMPLE_IMAGE.read_bytes())
        self.mode = mode
        self.server = StageServer(build_stage("seg", settings, store), settings)
        port = self.server.start(port=0)
        started = time.perf_counter()
        self.client = StageClient("seg", f"localhost:{port}", stub_class("seg"), settings)
        self.client.admin.Current(common_pb2.CurrentModelRequest(), timeout=10)
        self.first_ms = round((time.perf_counter() - started) * 1000, 3)
        self.request = seg_pb2.SegmentRequest(
            image=image_ref(key, 512, 512), boxes=[box_to_proto([150, 50, 300, 200])]
        )
        self.timings: dict[str, list[float]] = {"current": [], "segment": []}

    def call_each(self) -> None:
        """One Current and one Segment, timed."""
        started = time.perf_counter()
        self.client.admin.Current(common_pb2.CurrentModelRequest(), timeout=10)
        self.timings["current"].append(time.perf_counter() - started)
        started = time.perf_counter()
        self.client.call("Segment", self.request, timeout=30)
        self.timings["segment"].append(time.perf_counter() - started)

    def close(self) -> dict:
        """Stop, and the row of this mode."""
        self.client.close()
        self.server.stop(grace=0)
        row = {"mode": self.mode, "first_call_ms": self.first_ms}
        for name, values in self.timings.items():
            row[f"{name}_p50_ms"] = percentile(values, 0.5)
            row[f"{name}_p90_ms"] = percentile(values, 0.9)
            row[f"{name}_mean_ms"] = round(statistics.fmean(values) * 1000, 3)
        return row


def main() -> None:
    """Run the three modes and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls of each kind per mode")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ca = CertificateAuthority(folder / "ca")
        server_pem = ca.issue("riveg-seg", server=True)
        client_pem = ca.issue("riveg-worker", server=False)
        tls = {"tls": True, "tls_cert": server_pem.cert, "tls_key": server_pem.key,
               "tls_ca": ca.pem.cert}  # fmt: skip
        mtls = {**tls, "mtls": True, "tls_client_cert": client_pem.cert,
                "tls_client_key": client_pem.key}  # fmt: skip
        endpoints = [
            Endpoint(mode, grpc_settings, folder / mode)
            for mode, grpc_settings in (("plaintext", {}), ("tls", tls), ("mtls", mtls))
        ]
        # Interleaved, so that whatever else the machine does weighs on every mode alike.
        for _ in tqdm(range(args.calls), desc="calls", file=sys.stderr):
            for endpoint in endpoints:
                endpoint.call_each()
        rows = [endpoint.close() for endpoint in endpoints]
    base = rows[0]
    for row in rows:
        for name in ("current", "segment"):
            row[f"{name}_p50_overhead_ms"] = round(
                row[f"{name}_p50_ms"] - base[f"{name}_p50_ms"], 3
            )
    result = {
        "calls": args.calls,
        "cpus": os.cpu_count(),
        "grpc": grpc.__version__,
        "rows": rows,
        "command": f"python benchmarks/tls.py --calls {args.calls}",
    }
    out = ROOT / "benchmarks" / "results" / "tls.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'mode':<10} {'first ms':>9} {'Current p50':>12} {'Segment p50':>12} "
          f"{'Segment p90':>12} {'+p50 Segment':>13}")  # fmt: skip
    for row in rows:
        print(f"{row['mode']:<10} {row['first_call_ms']:>9.2f} {row['current_p50_ms']:>12.3f} "
              f"{row['segment_p50_ms']:>12.3f} {row['segment_p90_ms']:>12.3f} "
              f"{row['segment_p50_overhead_ms']:>13.3f}")  # fmt: skip
    print(f"wrote {out.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
