"""Live captioning of a camera, stream or video file, with an optional detector alongside.

    python apps/camera_caption.py bundles/blip-cpu --source 0
    python apps/camera_caption.py bundles/blip-cpu --source rtsp://cam.local/stream --caption-every 2
    python apps/camera_caption.py bundles/blip-cpu --source clip.mp4 --headless --output out/cap \\
        --detect bundles/owl-cpu --prompts "person, cup"

Window keys: q or Esc quits, p re-reads --prompts-file. Exit codes: 0 ok, 1 error, 2 usage, 130 interrupted.
`edgevlp run BUNDLE [BUNDLE]` runs the same app (see docs/user-guide.md).
"""

from __future__ import annotations

import argparse
import sys

from edgevlp.app.config import add_run_arguments
from edgevlp.app.main import script_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camera_caption", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="captioner bundle (task caption), e.g. from `edgevlp export ... --target cpu`")
    parser.add_argument("--detect", metavar="BUNDLE", help="also detect --prompts with this detector bundle")
    add_run_arguments(parser, bundles=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    return script_main(build_parser(), argv, expect_task="caption",
                       bundles=lambda args: [args.bundle] + ([args.detect] if args.detect else []))


if __name__ == "__main__":
    sys.exit(main())
