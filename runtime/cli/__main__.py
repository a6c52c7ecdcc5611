"""``python -m runtime.cli ...`` is the ``coordinator`` command (the benchmarks start simulators this way)."""

import sys

from . import main

sys.exit(main())
