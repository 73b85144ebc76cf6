"""A poison of a third kind: gradient alignment (Fowl et al. 2021, "Preventing unauthorized use of
proprietary data: poisoning for secure dataset release"). Min-min noise (MI-UE, EM) asks for a
perturbation the surrogate finds *easy*; this one asks for a perturbation whose training gradient
points *against* learning the clean images, a bilevel goal approximated by one gradient.

1. Train the crafting model (by default `smallcnn`, the CPU surrogate) on the clean training set
   with the victims' own recipe and augmentation (`miue_ext.evaluate.train.train_victim`).
2. Freeze it (eval mode) and move every image's perturbation, from a random start in the budget
   (at 0 the cosine below is at its maximum and has no gradient), so that the parameter gradient of
   the cross-entropy on the poisoned batch, g(x + delta), points opposite to the gradient on the
   same clean batch, g(x): `--passes` passes over the training set, each batch seen through a
   fresh crop + flip (the victims' augmentation, applied to x + delta as the victims apply it),
   minimising 1 + cos(g(x + delta), g(x)) by signed steps, projected to the L-inf ball of `--eps`
   and to [0, 1]. A victim that descends g(x + delta) then climbs the clean loss.
3. With `--colour-only` (the default) the perturbation is one colour shift per image (3 numbers),
   the one part of the noise that protects on `patches` (docs/evaluation.md); `--per-pixel`
   optimises every value instead.
4. Round to whole pixel levels and write a poison file that `miue evaluate` reads.

python experiments/alignment_poison.py --data patches --seed 0 --out out/sweep_align/align_s0.npz

Not a method of this package: a reference poison for the protection tables (docs/evaluation.md).
The clean test set is only scored (the crafting model's accuracy in the log), never optimised on.
"""

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

from miue_ext import ops
from miue_ext.augment import CROP_PADDING, draw_shifts_and_flips, shift_and_flip
from miue_ext.datasets import load_dataset
from miue_ext.errors import InputError
from miue_ext.evaluate.defenses import Defense
from miue_ext.evaluate.train import TrainConfig, train_victim
from miue_ext.evaluate.victims import build_victim, victim_train_config
from miue_ext.generate.run_summary import versions
from miue_ext.poison_file import quantize, save_poison


def parameter_gradient(model, inputs_nhwc, labels, params, create_graph):
    """The cross-entropy's gradient over `params`, flattened into one vector."""
    loss = F.cross_entropy(model(inputs_nhwc.permute(0, 3, 1, 2)), labels)
    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    return torch.cat([g.reshape(-1) for g in grads])


def gradient_cosine(model, params, x, y, delta, views, create_graph):
    """cos(g(x + delta), g(x)) on one batch seen through `views` (shifts, flips); with
    `create_graph` it stays differentiable in delta."""
    shifts, flips = views
    clean_grad = parameter_gradient(model, shift_and_flip(x, shifts, flips, CROP_PADDING), y, params, False)
    poisoned = (x + delta).clamp(0, 1)
    poison_grad = parameter_gradient(
        model, shift_and_flip(poisoned, shifts, flips, CROP_PADDING), y, params, create_graph
    )
    return F.cosine_similarity(poison_grad, clean_grad.detach(), dim=0)


def alignment_step(model, params, x, y, delta, views, alpha, eps):
    """One signed step on `delta` (a leaf of the batch's shape or [B, 1, 1, C]) towards a poisoned
    gradient anti-parallel to the clean one; returns the cosine before the step."""
    delta.requires_grad_(True)
    cosine = gradient_cosine(model, params, x, y, delta, views, True)
    (step,) = torch.autograd.grad(cosine, delta)
    delta.requires_grad_(False)
    if delta.shape == x.shape:
        # per pixel: the package's projected step, since a value pushed outside [0, 1] would get no
        # gradient through the clamp in gradient_cosine and stay there for good
        ops.pgd_update_(delta, x, step, alpha, eps)
    else:  # one colour shift per image, clamped to [0, 1] where it is added
        delta.sub_(alpha * step.sign()).clamp_(-eps, eps)
    return cosine.item()


def mean_cosine(models, params, x_all, y_all, delta_all, batch_size, generator):
    """gradient_cosine per batch (fresh views, models in turn), averaged: how far the crafting
    got, measured after its last step."""
    cosines = []
    for k, start in enumerate(range(0, len(y_all), batch_size)):
        batch = slice(start, start + batch_size)
        views = draw_shifts_and_flips(len(y_all[batch]), generator)
        m = k % len(models)
        cosine = gradient_cosine(models[m], params[m], x_all[batch], y_all[batch], delta_all[batch], views, False)
        cosines.append(cosine.item())
    return sum(cosines) / len(cosines)


def craft(models, images, labels, eps, passes, alpha, batch_size, seed, colour_only, log):
    """(delta [N, H, W, C] (floats in [-eps, eps]), the mean cosine after the last step) against
    the frozen `models` (one or a list), taken in turn batch by batch. delta starts uniform in
    [-eps, eps]: at 0 the cosine is at its maximum, 1, and its gradient is 0 (roundoff only)."""
    models = models if isinstance(models, (list, tuple)) else [models]
    params = []
    for model in models:
        model.eval()
        params.append([p for p in model.parameters() if p.requires_grad])
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 11)
    x_all = torch.from_numpy(images).float().div_(255)
    y_all = torch.from_numpy(labels).long()
    n, h, w, c = x_all.shape
    shape = (n, 1, 1, c) if colour_only else (n, h, w, c)
    delta_all = (torch.rand(shape, generator=generator) * 2 - 1) * eps
    if not colour_only:
        delta_all = (x_all + delta_all).clamp(0, 1) - x_all
    batches = 0
    for p in range(passes):
        # the step falls linearly from alpha to alpha / 10 over the passes
        step = alpha * (1 - 0.9 * p / max(passes - 1, 1))
        order = torch.randperm(n, generator=generator)
        cosines = []
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            views = draw_shifts_and_flips(len(idx), generator)
            delta = delta_all[idx].clone()
            m = batches % len(models)
            batches += 1
            cosines.append(alignment_step(models[m], params[m], x_all[idx], y_all[idx], delta, views, step, eps))
            delta_all[idx] = delta
        log(
            f"  pass {p + 1}/{passes}: step {step * 255:.2f}/255, mean cosine(poisoned, clean) before its steps {sum(cosines) / len(cosines):+.4f}"
        )
    final = mean_cosine(models, params, x_all, y_all, delta_all, batch_size, generator)
    log(f"  after the last step: mean cosine(poisoned, clean) {final:+.4f}")
    return ((x_all + delta_all).clamp(0, 1) - x_all).numpy(), final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="patches", help="data set spec, as for miue generate (default patches)")
    parser.add_argument("--model", default="smallcnn", help="crafting model, a victim name (default smallcnn)")
    parser.add_argument(
        "--epochs",
        default="30",
        help="epochs to train the crafting model (default 30); a list such as 2,5,30 trains one model per"
        " entry (the same seed) and aligns against them in turn, a crude picture of a victim's training",
    )
    parser.add_argument("--passes", type=int, default=20, help="alignment passes over the training set (default 20)")
    parser.add_argument("--eps", type=float, default=8, help="budget in 1/255 units (default 8)")
    parser.add_argument("--alpha", type=float, default=2, help="first step in 1/255 units (default 2)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per alignment batch (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the crafting model and the views")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--colour-only", dest="colour_only", action="store_true", default=True, help="(default)")
    shape.add_argument("--per-pixel", dest="colour_only", action="store_false", help="optimise every value")
    parser.add_argument("--out", required=True, help="poison file to write")
    args = parser.parse_args()
    if not 0.5 <= args.eps <= 255:  # poisons are stored in whole pixel levels
        parser.error(f"--eps must be in [0.5, 255] (1/255 units), got {args.eps:g}")
    try:
        epochs = [int(e) for e in args.epochs.split(",")]
    except ValueError:
        parser.error(f"--epochs must be a positive integer or a comma-separated list of them, got {args.epochs!r}")
    if min(epochs) < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    for name in ("passes", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if not 0 < args.alpha <= args.eps:
        parser.error(f"--alpha must be in (0, eps], got {args.alpha:g}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        parser.error(f"--out: folder {out_dir} does not exist")
    if os.path.isdir(args.out):
        parser.error(f"--out must be a file to write, not the folder {args.out}")
    try:
        train = load_dataset(args.data, "train")
        test = load_dataset(args.data, "test")
        build_victim(args.model, train.num_classes, train.images.shape[3])
    except InputError as err:
        parser.error(str(err))

    def log(message: str) -> None:
        print(message, flush=True)

    tick = time.perf_counter()
    models, histories = [], []
    for count in epochs:
        torch.manual_seed(args.seed)
        model = build_victim(args.model, train.num_classes, train.images.shape[3])
        config: TrainConfig = victim_train_config(args.model, count, seed=args.seed)
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
        models.append(model)
        histories.append(history)
    train_seconds = time.perf_counter() - tick
    kind = "one colour shift per image" if args.colour_only else "per pixel"
    scores = ", ".join(f"{100 * h[-1]['test_acc']:.2f}%" for h in histories)
    log(f"crafting model(s): clean test accuracy {scores}; aligning {kind}")
    tick = time.perf_counter()
    delta, final_cosine = craft(
        models,
        train.images,
        train.labels,
        args.eps / 255,
        args.passes,
        args.alpha / 255,
        args.batch_size,
        args.seed,
        args.colour_only,
        log,
    )
    craft_seconds = time.perf_counter() - tick
    poisoned, perturbation = quantize(train.images, delta, args.eps / 255)
    meta = {
        "method": f"gradient-alignment poison, {kind} (reference)",
        "crafting_model": args.model,
        "crafting_epochs": epochs,
        "crafting_test_acc": [h[-1]["test_acc"] for h in histories],
        "passes": args.passes,
        "final_mean_cosine": final_cosine,
        "alpha_pixels": args.alpha,
        "batch_size": args.batch_size,
        "colour_only": args.colour_only,
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
        "history": histories,
    }
    save_poison(args.out, poisoned, train.labels, perturbation, meta)
    log(f"wrote {args.out}: train {train_seconds:.0f} s, craft {craft_seconds:.0f} s")


if __name__ == "__main__":
    try:
        main()
    except InputError as err:
        sys.exit(f"error: {err}")
