"""Model weights on disk: reading checkpoints, hashing them, checking a pair, writing a
merged folder."""
