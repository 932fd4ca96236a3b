"""``python -m dalle_fast.plan``: see :mod:`dalle_fast.plan.cli`."""
import sys

from .cli import main

sys.exit(main())
