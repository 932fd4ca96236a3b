"""``python -m dalle_fast.convert``: see :mod:`dalle_fast.convert.cli`."""
import sys

from .cli import main

sys.exit(main())
