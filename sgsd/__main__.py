"""``python -m sgsd ...`` is the same as the ``sgsd`` command."""

import sys

from sgsd.cli import main

sys.exit(main())
