"""ml_collections config files, one per method, each with named presets."""
