"""The image-folder options every command that takes --data shares (--image-size, --resize-to,
--cache-dir), and the keyword arguments of load_dataset they become."""

from __future__ import annotations

import argparse


def add_image_arguments(group) -> None:
    """Add the options to a parser or argument group (next to --data)."""
    group.add_argument(
        "--image-size",
        type=int,
        metavar="S",
        help="image folders: resize each image's shorter side to S (or to --resize-to) and keep "
        "the centre SxS, so images of any size and format can be used; decoded once into "
        "--cache-dir (default: imagefolder: images kept as they are, all one size; "
        "tiny-imagenet 64, mini-imagenet 84, imagenet100 224 from a shorter side of 256)",
    )
    group.add_argument(
        "--resize-to",
        type=int,
        metavar="R",
        help="image folders: the shorter side before the centre crop (default: S; imagenet100: "
        "256 for its default 224)",
    )
    group.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where decoded image folders are kept and reused (default: $MIUE_CACHE_DIR, else "
        "~/.cache/miue_ext/imagefolder)",
    )


def load_kwargs(args: argparse.Namespace, progress: bool | None = None) -> dict:
    """load_dataset's keyword arguments from the parsed options; `progress` defaults to the
    command's own --no-progress setting (pass False on all but one process of a group)."""
    if progress is None:
        progress = bool(getattr(args, "progress", False))
    return {
        "image_size": getattr(args, "image_size", None),
        "resize_to": getattr(args, "resize_to", None),
        "cache_dir": getattr(args, "cache_dir", None),
        "progress": progress,
    }
