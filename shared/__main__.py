"""Entry point for `python -m shared`."""

import sys

from shared.entrypoints.cli import main

sys.exit(main())
