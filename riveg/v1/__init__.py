"""Generated protobuf and gRPC code of the riveg.v1 contracts (scripts/gen_protos.py)."""
