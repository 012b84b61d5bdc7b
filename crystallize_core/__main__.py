"""``python -m crystallize_core``: the ``crystallize`` command line."""

import sys

from crystallize_core.cli import main

sys.exit(main())
