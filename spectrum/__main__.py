import sys

from spectrum.cli import main

sys.exit(main())
