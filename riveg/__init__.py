"""RiVEG-serve: grounded multimodal NER as gRPC stage services orchestrated by Celery."""

__version__ = "0.1.0"
