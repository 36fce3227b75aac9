"""The five RiVEG stage services: each is transport (gRPC servicer) + backends (models)."""
