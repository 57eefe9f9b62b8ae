"""Open-vocabulary detection on a camera, stream or video file, with an optional captioner alongside.

    python apps/camera_detect.py bundles/owl-cpu --source 0 --prompts "cup, person"
    python apps/camera_detect.py bundles/owl-cpu --source clip.mp4 --prompts cup --headless --output out/det
    python apps/camera_detect.py bundles/owl-orin --source csi://0 --prompts-file prompts.txt \\
        --caption bundles/blip-orin

Window keys: q or Esc quits, p re-reads --prompts-file. Exit codes: 0 ok, 1 error, 2 usage, 130 interrupted.
`edgevlp run BUNDLE [BUNDLE]` runs the same app (see docs/user-guide.md).
"""

from __future__ import annotations

import argparse
import sys

from edgevlp.app.config import add_run_arguments
from edgevlp.app.main import script_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camera_detect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="detector bundle (task detect), e.g. from `edgevlp export ... --target cpu`")
    parser.add_argument("--caption", metavar="BUNDLE", help="also caption with this captioner bundle")
    add_run_arguments(parser, bundles=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    return script_main(build_parser(), argv, expect_task="detect",
                       bundles=lambda args: [args.bundle] + ([args.caption] if args.caption else []))


if __name__ == "__main__":
    sys.exit(main())
