"""``python -m dalle_fast.train``: see :mod:`dalle_fast.train.cli`."""
import sys

from .cli import main

sys.exit(main())
