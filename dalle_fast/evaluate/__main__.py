"""``python -m dalle_fast.evaluate``: see :mod:`dalle_fast.evaluate.cli`."""
import sys

from .cli import main

sys.exit(main())
