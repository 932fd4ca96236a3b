"""``python -m dalle_fast.convert``: weights trained elsewhere as a run directory of ours
(:mod:`.cli`). ``openai-dvae``: OpenAI's released dVAE as a run's vae stage."""
from .cli import main

__all__ = ["main"]
