"""``python -m layers``: the same as the ``layers`` command."""

import sys

from layers.cli import main

sys.exit(main())
