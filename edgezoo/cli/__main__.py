"""Allow `python -m edgezoo.cli`."""

import sys

from edgezoo.cli import main

sys.exit(main())
