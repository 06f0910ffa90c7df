"""``python -m xdist`` = the ``xdist`` command."""

import sys

from xdist.cli import main

sys.exit(main())
