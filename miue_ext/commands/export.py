"""Write a poison file as a folder: images/NNNNN.png, labels.csv (filename,label), meta.json
and perturbation.pt (float32 [N, C, H, W] in [-eps, eps], the EM layout).

example:  miue export poison.npz poison_png/
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("poison", help="a poison .npz written by `miue generate`")
    parser.add_argument("out_dir", help="folder to create (must not exist)")


def run(args: argparse.Namespace) -> int:
    from miue_ext.poison_file import export_poison, load_poison

    poison = load_poison(args.poison)
    export_poison(poison, args.out_dir)
    print(f"wrote {len(poison.labels)} images, labels.csv and perturbation.pt to {args.out_dir}")
    return 0
