"""`python -m mdbpy` is the same as the `mdbpy` console script."""

import sys

from mdbpy.cli import main

sys.exit(main())
