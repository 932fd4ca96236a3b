"""``python -m dalle_fast.serve``: see :mod:`dalle_fast.serve.cli`."""
import sys

from .cli import main

sys.exit(main())
