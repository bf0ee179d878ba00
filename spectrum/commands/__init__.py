"""Sub-commands of the `spectrum` CLI, one module each."""
