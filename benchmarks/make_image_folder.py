"""Write a synthetic ImageNet-style folder (OUT_DIR/<class>/<image>) of mixed-size JPEGs and PNGs
cut from the embedded photos, for the large-data measurements of issue 14.

    python benchmarks/make_image_folder.py /tmp/folder3k --images 3000 --classes 10 \\
        --min-size 40 --max-size 120 --seed 0

Class c is photo c % 8 of `patches` (scikit-image's bundled photos, no download) seen through
one of the 8 flips/rotations (c // 8 % 8); with more than 64 classes the looks repeat (the
class folders stay distinct). Image i belongs to class i % C and is a random crop of its photo
(10% to 100% of the shorter side, any position), resized to a random width and height in
[--min-size, --max-size] and written as JPEG (quality 75-95) or, one time in four, as PNG.
Everything is drawn from --seed, so the same arguments write the same files (byte for byte
with the same Pillow). OUT_DIR must not exist or be empty.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

PNG_FRACTION = 0.25


def _variant(photo: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 symmetries of the square (4 rotations, each optionally mirrored)."""
    turned = np.rot90(photo, k % 4)
    return np.ascontiguousarray(turned[:, ::-1] if k >= 4 else turned)


def make_folder(
    out: Path, images: int, classes: int, min_size: int, max_size: int, seed: int, progress: bool = True
) -> list[Path]:
    from PIL import Image

    from miue_ext.datasets import patches

    photos = patches._photos()
    names = [name for name, _ in patches.PHOTOS]
    width = len(str(classes - 1))
    class_dirs = [out / f"c{c:0{width}d}_{names[c % len(photos)]}" for c in range(classes)]
    for folder in class_dirs:
        folder.mkdir(parents=True, exist_ok=True)
    looks = [_variant(photos[c % len(photos)], c // len(photos) % 8) for c in range(min(classes, 8 * len(photos)))]
    rng = np.random.default_rng(seed)
    written, last = [], time.monotonic()
    for i in range(images):
        c = i % classes
        photo = looks[c % len(looks)]
        h, w = photo.shape[:2]
        side = int(rng.integers(max(8, min(h, w) // 10), min(h, w) + 1))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        aspect = float(np.exp(rng.uniform(-0.3, 0.3)))  # the crop is not always square
        crop_w = min(w - left, max(8, round(side * aspect)))
        crop = Image.fromarray(photo[top : top + side, left : left + crop_w])
        size = (int(rng.integers(min_size, max_size + 1)), int(rng.integers(min_size, max_size + 1)))
        picture = crop.resize(size, Image.BILINEAR)
        as_png, quality = rng.random() < PNG_FRACTION, int(rng.integers(75, 96))
        path = class_dirs[c] / f"img_{i:07d}.{'png' if as_png else 'jpg'}"
        if as_png:
            picture.save(path, format="PNG")
        else:
            picture.save(path, format="JPEG", quality=quality)
        written.append(path)
        if progress and (time.monotonic() - last > 5 or i + 1 == images):
            print(f"{i + 1}/{images} images written to {out}", file=sys.stderr, flush=True)
            last = time.monotonic()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", metavar="OUT_DIR", help="folder to create (must not exist, or be empty)")
    parser.add_argument("--images", type=int, default=3000, help="number of images (default 3000)")
    parser.add_argument("--classes", type=int, default=10, help="number of class folders (default 10)")
    parser.add_argument("--min-size", type=int, default=40, help="smallest width or height (default 40)")
    parser.add_argument("--max-size", type=int, default=120, help="largest width or height (default 120)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.images < 1 or args.classes < 1 or args.images < args.classes:
        parser.error("need --images >= --classes >= 1")
    if not 8 <= args.min_size <= args.max_size <= 4096:
        parser.error("need 8 <= --min-size <= --max-size <= 4096")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(f"{out} exists and is not an empty folder")
    start = time.monotonic()
    files = make_folder(out, args.images, args.classes, args.min_size, args.max_size, args.seed, not args.quiet)
    total = sum(f.stat().st_size for f in files)
    print(
        f"wrote {len(files)} images in {args.classes} classes to {out} ({total / 2**20:.1f} MiB) in "
        f"{time.monotonic() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
