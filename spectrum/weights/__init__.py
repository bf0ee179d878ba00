"""Checkpoint weights: real model shapes and what holding them costs (``planner``)."""
