"""One subpackage per op: ``__init__`` (checks + dispatch), ``kernel`` (Triton), ``reference`` (PyTorch)."""
