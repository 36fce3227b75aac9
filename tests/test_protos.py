"""The committed riveg/v1 code must be what grpcio-tools makes of protos/ today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) is needed to regenerate")
    generated = _load_generator().generate(tmp_path)
    assert generated, "no code was generated"
    for fresh in generated:
        committed = ROOT / "riveg" / "v1" / fresh.name
        assert committed.exists(), f"{committed} is missing: run python scripts/gen_protos.py"
        assert committed.read_bytes() == fresh.read_bytes(), (
            f"{committed.name} drifted from protos/: run python scripts/gen_protos.py"
        )


def test_every_response_names_its_model() -> None:
    from riveg.v1 import common_pb2, llm_pb2, mner_pb2, seg_pb2, ve_pb2, vg_pb2

    responses = [
        llm_pb2.KnowledgeResponse, llm_pb2.ExpandResponse, mner_pb2.RecognizeResponse,
        ve_pb2.EntailResponse, vg_pb2.GroundResponse, seg_pb2.SegmentResponse,
        common_pb2.CurrentModelResponse,
    ]  # fmt: skip
    for response in responses:
        assert "model" in response.DESCRIPTOR.fields_by_name, response.DESCRIPTOR.full_name
    assert common_pb2.DESCRIPTOR.package == "riveg.v1"
