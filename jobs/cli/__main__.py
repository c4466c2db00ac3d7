"""``python -m jobs.cli ARGS`` = ``oscar ARGS`` (e.g. under ``torchrun -m jobs.cli train``)."""

import sys

from jobs.cli.main import main

sys.exit(main())
