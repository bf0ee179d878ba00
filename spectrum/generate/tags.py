"""The thinking models' reasoning tags, without torch: grading and the CLI import these."""

THINK_START = "<think>"
THINK_END = "</think>"
