"""Files on disk: atomic writes, the run manifest, ownership markers, the run lock, checkpoints."""
