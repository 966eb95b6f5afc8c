"""Allow ``python -m kestrelpy``."""

import sys

from kestrelpy.cli import main

sys.exit(main())
