"""The thinking models' reasoning tags, without torch: grading and the CLI import these."""

THINK_OPEN = "<think>"
THINK_END = "</think>"
