"""Write a poison file as a folder: images/NNNNN.png, labels.csv (filename,label), meta.json
and perturbation.pt (float32 [N, C, H, W] in [-eps, eps], the EM layout).

example:  miue export poison.npz poison_png/
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("poison", help="a poison .npz written by `miue generate`")
    parser.add_argument("out_dir", help="folder to create (must not exist)")


def run(args: argparse.Namespace) -> int:
    from miue_ext.errors import InputError, writing
    from miue_ext.poison_file import export_poison, load_poison

    out = Path(args.out_dir)  # "link/" names the link itself, as the folder would be created in its place
    if out.is_symlink():  # never write through a link, even one that points nowhere (yet)
        raise InputError(f"{args.out_dir} is a symbolic link (to {os.readlink(out)}); "
                         "refusing to write through it: choose a new folder")
    poison = load_poison(args.poison)
    with writing(args.out_dir):  # a full disk: one line naming the folder; the staging folder is removed
        export_poison(poison, args.out_dir)
    print(f"wrote {len(poison.labels)} images, labels.csv and perturbation.pt to {args.out_dir}")
    return 0
