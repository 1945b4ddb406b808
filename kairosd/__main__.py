"""`python -m kairosd` runs the CLI."""

import sys

from kairosd.cli import main

sys.exit(main())
