"""Image models shared by the vision services (bundled weights only)."""
