"""The embedded model pair: a synthetic reasoning task, its training recipe, its measurement."""
