"""Hugging Face Space entry point: ``python app.py [--port 7861 …]`` is ``spectrum app``."""

import sys

from ui.command import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
