"""The leaf core: configuration, the stage declarations, logging, object storage, images and
errors. It imports nothing else of the project."""
