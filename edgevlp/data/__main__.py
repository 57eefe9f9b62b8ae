"""Preview or export shape scenes.

Examples:
    python -m edgevlp.data --split val --n 16 --sheet /tmp/shapes_sheet.png
    python -m edgevlp.data --split heldout --n 500 --size 224 --coco out/shapes-heldout --overwrite
"""

from __future__ import annotations

import argparse

import cv2

from edgevlp.data.coco import to_coco
from edgevlp.data.shapes import contact_sheet, dataset
from edgevlp.data.vocab import SPLITS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edgevlp.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="val", choices=list(SPLITS))
    parser.add_argument("--n", type=int, default=16, help="number of scenes")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--start", type=int, default=0, help="index of the first scene in the split")
    parser.add_argument("--sheet", help="write a contact sheet (PNG) with boxes and first captions")
    parser.add_argument("--coco", help="write a COCO folder (images/ + annotations.json)")
    parser.add_argument("--format", default="jpg", choices=["jpg", "png"], help="COCO image format")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing COCO export")
    args = parser.parse_args(argv)
    if not (args.sheet or args.coco):
        parser.error("nothing to do: pass --sheet PATH and/or --coco DIR")
    if args.sheet:
        sheet = contact_sheet(list(dataset(args.split, args.n, args.size, args.start)))
        cv2.imwrite(args.sheet, sheet[..., ::-1])
        print(f"wrote {args.sheet}")
    if args.coco:
        path = to_coco(dataset(args.split, args.n, args.size, args.start), args.coco,
                       image_format=args.format, overwrite=args.overwrite)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
