"""Write a poison file as a new folder, in this package's layout or in one the field's tools read
(docs/formats.md names the repository and file each convention comes from):

  folder      (default) images/00000.png ..., labels.csv (filename,label), meta.json and
              perturbation.pt (float32 [N, C, H, W] = perturbation / 255)
  png-index   data/0.png .. data/{N-1}.png, one PNG per image named by its index in the clean
              set, no labels file: TAP and APBench read OUT (as OUT/data/), ISS reads OUT/data/
  em-pt       perturbation.pt: float32 [N, C, H, W] in [-eps, eps], as EM's perturbation.py saves it
  avatar-npz  METHOD_DATA_Sanitized_0.npz: `data` uint8 [N, H, W, C] and `targets` int64 [N]
  imagefolder a poison of an image folder: each image as a lossless PNG under its source's
              relative path (class folders kept; a.jpg -> a.png), ready to publish in its place

A poison in these formats is read back by `miue evaluate`, `miue stats` and `miue mi` as png:DIR,
em:FILE.pt or avatar:FILE.npz, with --data naming the clean set.

examples:
  miue export poison.npz poison_folder/
  miue export poison.npz poison_tap/ --format png-index
  miue export poison.npz poison_em/ --format em-pt
  miue export photos_poison.npz photos_protected/ --format imagefolder
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from miue_ext.poison_formats import EXPORT_FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("poison", help="a poison .npz written by `miue generate`")
    parser.add_argument("out_dir", help="folder to create (must not exist)")
    parser.add_argument(
        "--format", default="folder", choices=EXPORT_FORMATS, help="layout of the folder (default folder; see above)"
    )


def run(args: argparse.Namespace) -> int:
    from miue_ext.errors import InputError, writing
    from miue_ext.poison_file import export_poison, load_poison

    out = Path(args.out_dir)  # "link/" names the link itself, as the folder would be created in its place
    if out.is_symlink():  # never write through a link, even one that points nowhere (yet)
        raise InputError(
            f"{args.out_dir} is a symbolic link (to {os.readlink(out)}); "
            "refusing to write through it: choose a new folder"
        )
    poison = load_poison(args.poison)
    with writing(args.out_dir):  # a full disk: one line naming the folder; the staging folder is removed
        summary = export_poison(poison, args.out_dir, args.format)
    print(f"wrote {summary} to {args.out_dir}")
    return 0
