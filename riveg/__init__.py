"""RiVEG-serve: grounded multimodal NER as gRPC stage services orchestrated by Celery."""

__version__ = "0.1.0"

STAGES: tuple[str, ...] = ("llm", "mner", "ve", "vg", "seg")
"""The five model stages, each its own gRPC service and Celery queue."""
