"""``python -m dalle_fast.serve.screenshot --run runs/demo --out docs/serve.png``: the picture of
the page in the README. Serves the run's page on a free local port, types a prompt into it in a
headless Chromium (:mod:`dalle_fast.serve.browser`), presses Generate, waits for the gallery and
saves a screenshot of the window as a PNG.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..cli_types import positive_int
from ..errors import UsageError
from .app import EXAMPLE, build_app, launch
from .browser import BrowserMissing, chromium, free_port, generate_in_page
from .cli import DEFAULT_HOST
from .studio import Studio


def build_parser() -> argparse.ArgumentParser:
    """The command line parser (see the module doc)."""
    parser = argparse.ArgumentParser(prog="python -m dalle_fast.serve.screenshot",
                                     description="Save a screenshot of the page of python -m dalle_fast.serve.")
    parser.add_argument("--run", type=Path, required=True, help="the run directory to serve")
    parser.add_argument("--out", type=Path, default=Path("docs/serve.png"), help="the PNG to write "
                                                                                  "(default: docs/serve.png)")
    parser.add_argument("--prompt", default=EXAMPLE, help=f"the prompt typed (default: {EXAMPLE!r})")
    parser.add_argument("--num", type=positive_int, default=16, help="samples asked for (default: 16)")
    parser.add_argument("--keep", type=positive_int, default=8, help="images kept (default: 8)")
    parser.add_argument("--width", type=positive_int, default=1280, help="window width in px (default: 1280)")
    parser.add_argument("--height", type=positive_int, default=1000, help="window height in px (default: 1000)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status 0.
    Usage errors (the run, a missing browser) exit with status 2 and a one-line message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        studio = Studio(args.run)
    except UsageError as e:
        parser.error(str(e))
    app = build_app(studio)
    try:
        port = free_port(DEFAULT_HOST)
        launch(app, DEFAULT_HOST, port, block=False)
        driver = chromium(args.width, args.height)
        try:
            shown = generate_in_page(driver, f"http://{DEFAULT_HOST}:{port}/", args.prompt, args.num, args.keep)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            if not driver.save_screenshot(str(args.out)):
                parser.error(f"--out {args.out}: the browser could not save the screenshot there")
        finally:
            driver.quit()
    except BrowserMissing as e:
        parser.error(str(e))
    finally:
        app.close()
        studio.close()
    print(f"wrote {args.out} (the page with {shown} images for {args.prompt!r})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
