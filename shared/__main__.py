"""Entry point for `python -m shared`."""

import sys

from shared.cli import main

sys.exit(main())
