"""``python -m dalle_fast.serve``: the web page of a trained run (docs/design.md#command-line).

    python -m dalle_fast.serve --run runs/NAME [--host 127.0.0.1] [--port 7860] [--batch-size 64]
        [--clip run|open_clip:MODEL --clip-weights FILE]

Serves the page of :mod:`dalle_fast.serve.app` on ``--host`` (by default 127.0.0.1: this machine
only) and ``--port`` until Ctrl-C. Without gradio, or for a run that cannot be opened, a port that
is taken or another problem the user can fix, prints one line and exits with status 2, as
argparse does.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..cli_types import positive_int
from ..errors import UsageError
from ..run import add_reranker_arguments
from .studio import Studio

INSTALL = 'pip install -e ".[serve]"'  # in the repository's root folder
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_PORT = 65535


def port_number(text: str) -> int:
    """A TCP port, 1 to 65535."""
    value = positive_int(text)
    if value > MAX_PORT:
        raise argparse.ArgumentTypeError(f"must be a port number in [1, {MAX_PORT}], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line parser (see the module doc)."""
    parser = argparse.ArgumentParser(prog="python -m dalle_fast.serve",
                                     description="Serve a web page that generates images for a prompt with a "
                                                 "trained run (the images of python -m dalle_fast.generate).")
    parser.add_argument("--run", type=Path, required=True, help="the run directory (python -m dalle_fast.train --out)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"the address to listen on (default: {DEFAULT_HOST}, this machine only; 0.0.0.0 "
                             "serves everyone who can reach it)")
    parser.add_argument("--port", type=port_number, default=DEFAULT_PORT,
                        help=f"the port to listen on (default: {DEFAULT_PORT})")
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="images sampled at once (default: 64, as generate)")
    add_reranker_arguments(parser, "the run's config: clip.reranker")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``) until Ctrl-C; returns the exit
    status 0. Usage errors exit with status 2 and a one-line message, as argparse does."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from .app import build_app, launch
    except ImportError as e:
        if (e.name or "").partition(".")[0] not in ("gradio", "gradio_client"):
            raise
        parser.error(f"the web page needs gradio, which is not installed here: {INSTALL}")
    try:
        studio = Studio(args.run, batch_size=args.batch_size, clip=args.clip, clip_weights=args.clip_weights)
    except UsageError as e:
        parser.error(str(e))
    try:
        launch(build_app(studio), args.host, args.port)
    except OSError as e:
        parser.error(f"--host {args.host} --port {args.port}: cannot listen there ({e})")
    finally:
        studio.close()
    return 0
