"""A reference poison of another kind: class-targeted adversarial examples (Fowl et al. 2021,
"Adversarial Examples Make Strong Poisons"), to ask how far *any* 8/255 poison from the same small
surrogate can push a victim on a data set, and so whether a goal for MI-UE is within reach there.

1. Train the crafting model (by default the CPU surrogate, `smallcnn`) on the clean training set
   with the victims' own recipe and augmentation (`miue_ext.evaluate.train.train_victim`).
2. Freeze it and move every training image towards the next class, (y + 1) mod C: `--steps`
   sign-gradient steps that *lower* the cross-entropy to that target class, each on a fresh
   random crop + flip of x + delta (the victims' augmentation, so that the features survive it),
   projected to the L-inf ball of `--eps` and to [0, 1]. With `--untargeted`, steps raise the
   cross-entropy of the true class instead (error-maximising noise).
3. Round to whole pixel levels and write a poison file that `miue evaluate` reads.

python experiments/adversarial_poison.py --data patches --seed 0 --out out/sweep_ap/ap_s0.npz

Not a method of this package: a control for the protection tables (docs/evaluation.md).
"""

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

from miue_ext import ops
from miue_ext.augment import RandomShiftFlip
from miue_ext.datasets import load_dataset
from miue_ext.errors import InputError
from miue_ext.evaluate.defenses import Defense
from miue_ext.evaluate.train import TrainConfig, accuracy, train_victim
from miue_ext.evaluate.victims import build_victim, victim_train_config
from miue_ext.generate.run_summary import versions
from miue_ext.poison_file import quantize, save_poison


def craft(model, images, labels, num_classes, eps, steps, alpha, batch_size, seed, untargeted, log):
    """delta [N, H, W, C] (floats) by PGD against the frozen `model` (eval mode)."""
    model.eval().requires_grad_(False)
    augment = RandomShiftFlip(torch.Generator().manual_seed(seed * 1_000_003 + 7))
    delta = torch.zeros(images.shape, dtype=torch.float32)
    x_all = torch.from_numpy(images).float().div_(255)
    y_all = torch.from_numpy(labels)
    target_all = y_all if untargeted else (y_all + 1) % num_classes
    # ops.pgd_update_ descends: ascend the true class's loss by negating its gradient.
    direction = -1.0 if untargeted else 1.0
    for start in range(0, len(labels), batch_size):
        x, target = x_all[start : start + batch_size], target_all[start : start + batch_size]
        d = delta[start : start + batch_size]  # a view: updated in place
        for _ in range(steps):
            inputs = (x + d).requires_grad_(True)
            loss = F.cross_entropy(model(augment(inputs).permute(0, 3, 1, 2)), target)
            (grad,) = torch.autograd.grad(loss, inputs)
            ops.pgd_update_(d, x, grad.mul_(direction), alpha, eps)
        log(f"  crafted {min(start + batch_size, len(labels))}/{len(labels)} (last loss {loss.item():.3f})")
    return delta.numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="patches", help="data set spec, as for miue generate (default patches)")
    parser.add_argument("--model", default="smallcnn", help="crafting model, a victim name (default smallcnn)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs to train the crafting model (default 30)")
    parser.add_argument("--steps", type=int, default=100, help="PGD steps per image (default 100)")
    parser.add_argument("--eps", type=float, default=8, help="budget in 1/255 units (default 8)")
    parser.add_argument(
        "--alpha", type=float, default=None, help="step in 1/255 units (default 2.5 eps / steps, at most eps)"
    )
    parser.add_argument("--untargeted", action="store_true", help="error-maximising instead of class-targeted")
    parser.add_argument("--batch-size", type=int, default=256, help="images per PGD batch (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crafting model and the crops")
    parser.add_argument("--out", required=True, help="poison file to write")
    args = parser.parse_args()
    if not 0.5 <= args.eps <= 255:  # poisons are stored in whole pixel levels
        parser.error(f"--eps must be in [0.5, 255] (1/255 units), got {args.eps:g}")
    for name in ("epochs", "steps", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    alpha = min(2.5 * args.eps / args.steps, args.eps) if args.alpha is None else args.alpha
    if not 0 < alpha <= args.eps:
        parser.error(f"--alpha must be in (0, eps], got {alpha:g}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        parser.error(f"--out: folder {out_dir} does not exist")
    try:
        train = load_dataset(args.data, "train")
        test = load_dataset(args.data, "test")
        model = build_victim(args.model, train.num_classes, train.images.shape[3])
    except InputError as err:
        parser.error(str(err))

    def log(message: str) -> None:
        print(message, flush=True)

    torch.manual_seed(args.seed)
    tick = time.perf_counter()
    config: TrainConfig = victim_train_config(args.model, args.epochs, seed=args.seed)
    log(f"training the crafting model {args.model} on clean {train.name}: {config.to_dict()}")
    history = train_victim(
        model,
        train.images,
        train.labels,
        test.images,
        test.labels,
        config,
        Defense("none"),
        torch.device("cpu"),
        log=log,
    ).history
    train_seconds = time.perf_counter() - tick
    test_acc = history[-1]["test_acc"]  # train_victim scored the final model on the clean test set
    kind = "untargeted" if args.untargeted else "class-targeted (y + 1)"
    log(
        f"crafting model: clean test accuracy {100 * test_acc:.2f}%; crafting {kind}, {args.steps} steps of {alpha:g}/255"
    )
    tick = time.perf_counter()
    delta = craft(
        model,
        train.images,
        train.labels,
        train.num_classes,
        args.eps / 255,
        args.steps,
        alpha / 255,
        args.batch_size,
        args.seed,
        args.untargeted,
        log,
    )
    craft_seconds = time.perf_counter() - tick
    poisoned, perturbation = quantize(train.images, delta, args.eps / 255)
    # How far the attack got on its own model (unaugmented, after rounding): at 8/255 on `patches`
    # and `digits` a clean-trained smallcnn moves only 20-27% of 256 images to the target class.
    aimed = train.labels if args.untargeted else (train.labels + 1) % train.num_classes
    kept = accuracy(model, torch.from_numpy(poisoned), torch.from_numpy(aimed), 500)
    hit_rate = 1 - kept if args.untargeted else kept
    log(
        f"crafting model on the poisoned images: {'misclassified' if args.untargeted else 'target class'} {100 * hit_rate:.1f}%"
    )
    meta = {
        "method": f"adversarial poison, {kind} (control)",
        "crafting_model": args.model,
        "crafting_epochs": args.epochs,
        "crafting_test_acc": test_acc,
        "crafting_model_hit_rate": hit_rate,
        "steps": args.steps,
        "alpha_pixels": alpha,
        "seed": args.seed,
        "eps": args.eps / 255,
        "eps_pixels": args.eps,
        "dataset": train.name,
        "num_classes": train.num_classes,
        "class_names": train.class_names,
        "dataset_sha256": train.fingerprint(),
        "versions": versions(),
        "train_seconds": round(train_seconds, 1),
        "craft_seconds": round(craft_seconds, 1),
        "history": history,
    }
    save_poison(args.out, poisoned, train.labels, perturbation, meta)
    log(f"wrote {args.out}: train {train_seconds:.0f} s, craft {craft_seconds:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except InputError as err:
        sys.exit(f"error: {err}")
