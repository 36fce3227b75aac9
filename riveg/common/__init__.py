"""What every service and the orchestrator share: config, logging, storage, gRPC helpers."""
