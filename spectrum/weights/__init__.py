"""Model weights: reading checkpoints, hashing them, checking a pair, writing a merged
folder, and what holding them costs (``planner``, real model shapes in ``shapes``)."""
