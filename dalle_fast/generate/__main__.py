"""``python -m dalle_fast.generate``: see :mod:`dalle_fast.generate.cli`."""
import sys

from .cli import main

sys.exit(main())
