"""The providers the benchmarks compare, as runners: one callable per (op, mode, provider, size).

fused     miue_ext.ops, the fused kernels
eager     idiomatic PyTorch in the input's dtype (miue_ext.reference.mi_ue_loss_eager:
          normalize + matmul + cdist; for the update, miue_ext.reference.pgd_update)
authors   the structure of the authors' released code: a [B, B, D] broadcast for the cosines
          and a per-row Python loop for the distances (miue_ext.reference.mi_ue_loss_authors)
compiled  torch.compile(eager), shapes static
floor     what no implementation can skip: the B x B x D matrix products of the loss
          (Z Z^T forward, two products backward: 1, 2 or 3 of them by mode) into preallocated
          outputs; for the update, a copy that moves as many bytes (read 3 tensors, write 1)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from miue_ext import ops
from miue_ext import reference as ref

TEMPERATURE, ZETA = 0.1, 0.1
ALPHA, EPS = 0.8 / 255, 8 / 255
IMAGE_SHAPE = (3, 32, 32)
LOSS_OPS = ("mi_ue_loss", "sim_loss", "dist_loss", "intra_class_cosine")
MODES = ("fwd", "bwd", "fwd+bwd")
PRODUCTS = {"fwd": 1, "bwd": 2, "fwd+bwd": 3}  # B x B x D products a fused loss cannot avoid
LOSS_PROVIDERS = ("fused", "eager", "authors", "compiled", "floor")
PGD_PROVIDERS = ("fused", "eager", "compiled", "floor")
# The authors' structure holds about 6 [B, B, D] float32 tensors at its peak (measured with the
# CPU allocator profile at B=256..512): 6 * 4 bytes per element of the broadcast.
AUTHORS_BYTES_PER_BROADCAST_ELEMENT = 24


# --------------------------------------------------------------------------- eager/authors forms
def _unit_rows(features):
    return features / torch.linalg.vector_norm(features, dim=1, keepdim=True).clamp_min(1e-8)


def _same_class(labels, dtype):
    return (labels[:, None] == labels[None, :]).to(dtype)


def dist_loss_eager(features, labels):
    """L_dist as a PyTorch user writes it: cdist, masked row sums (the eager form's dist term)."""
    same = _same_class(labels, features.dtype)
    return torch.log1p((torch.cdist(features, features) * same).sum(1) / features.shape[1]).mean()


def intra_class_cosine_eager(features, labels):
    unit = _unit_rows(features)
    eye = torch.eye(features.shape[0], dtype=torch.bool, device=features.device)
    pairs = (labels[:, None] == labels[None, :]) & ~eye
    return (unit @ unit.T)[pairs].mean()


def dist_loss_authors(features, labels):
    """The authors' per-row loop for L_dist (the distance half of reference.mi_ue_loss_authors)."""
    terms = []
    for i in range(features.shape[0]):
        diff = features[i] - features[labels == labels[i]]
        square = (diff * diff).sum(-1)
        positive = square > 0  # gradient 0 at |v| = 0 instead of sqrt's NaN
        norms = torch.where(positive, torch.sqrt(torch.where(positive, square, torch.ones_like(square))), 0.0)
        terms.append(torch.log1p(norms.sum() / features.shape[1]))
    return torch.stack(terms).mean()


def intra_class_cosine_authors(features, labels):
    cos = F.cosine_similarity(features[:, None, :], features[None, :, :], dim=-1, eps=1e-8)
    eye = torch.eye(features.shape[0], dtype=torch.bool, device=features.device)
    return cos[(labels[:, None] == labels[None, :]) & ~eye].mean()


def _loss_forms():
    """{provider: {op: f(features, labels) -> 0-dim loss}} for every provider but floor/compiled."""
    return {
        "fused": {
            "mi_ue_loss": lambda f, y: ops.mi_ue_loss(f, y, TEMPERATURE, ZETA),
            "sim_loss": lambda f, y: ops.sim_loss(f, y, TEMPERATURE),
            "dist_loss": lambda f, y: ops.dist_loss(f, y),
            "intra_class_cosine": lambda f, y: ops.intra_class_cosine(f, y),
        },
        "eager": {
            "mi_ue_loss": lambda f, y: ref.mi_ue_loss_eager(f, y, TEMPERATURE, ZETA),
            "sim_loss": lambda f, y: ref.mi_ue_loss_eager(f, y, TEMPERATURE, 0.0),
            "dist_loss": dist_loss_eager,
            "intra_class_cosine": intra_class_cosine_eager,
        },
        "authors": {
            "mi_ue_loss": lambda f, y: ref.mi_ue_loss_authors(f, y, TEMPERATURE, ZETA),
            "sim_loss": lambda f, y: ref.mi_ue_loss_authors(f, y, TEMPERATURE, 0.0),
            "dist_loss": dist_loss_authors,
            "intra_class_cosine": intra_class_cosine_authors,
        },
    }


_COMPILED: dict[str, Callable] = {}


def compiled(name: str, eager_fn: Callable) -> Callable:
    """One torch.compile wrapper per eager function, static shapes (a recompile per size)."""
    if name not in _COMPILED:
        import torch._dynamo

        # Every benchmark size is a new specialisation; the default limit (8) would silently
        # fall back to eager after the 8th.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        _COMPILED[name] = torch.compile(eager_fn, dynamic=False)
    return _COMPILED[name]


def loss_function(op: str, provider: str) -> Callable:
    if provider == "compiled":
        return compiled(op, _loss_forms()["eager"][op])
    return _loss_forms()[provider][op]


def authors_fits(batch: int, dim: int, device: torch.device) -> bool:
    """Whether the authors' [B, B, D] broadcast fits in half of the memory there is."""
    need = AUTHORS_BYTES_PER_BROADCAST_ELEMENT * batch * batch * dim
    if device.type == "cuda":
        return need < 0.5 * torch.cuda.get_device_properties(device).total_memory
    return need < 0.5 * available_host_bytes()


def available_host_bytes() -> int:
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return 8 << 30


# --------------------------------------------------------------------------- runners
@dataclass
class Runner:
    """`run` is the timed call; `setup`, if any, prepares each call untimed (backward-only mode)."""

    run: Callable[[], object]
    setup: Callable[[], object] | None = None


FEATURE_KINDS = ("randn", "collapsed")
# Spread of a collapsed class around its centre, relative to the centre's norm: same-class
# cosines about 1 / (1 + 0.05^2) = 0.9975, MI-UE's own operating point (it drives them past 0.99).
COLLAPSED_SPREAD = 0.05


def loss_inputs(batch: int, dim: int, classes: int, device, seed: int = 0, kind: str = "randn"):
    """randn: independent Gaussian rows. collapsed: each class's rows are its centre plus small
    noise (the near-duplicate regime of a converged MI-UE surrogate)."""
    if kind not in FEATURE_KINDS:
        raise ValueError(f"kind must be one of {FEATURE_KINDS}, got {kind!r}")
    generator = torch.Generator(device).manual_seed(seed)  # drawn on the device: no host copy
    features = torch.randn(batch, dim, generator=generator, device=device)
    labels = torch.randint(0, classes, (batch,), generator=generator, device=device)
    if kind == "collapsed":
        centres = torch.randn(classes, dim, generator=generator, device=device)
        features = centres[labels].add_(features, alpha=COLLAPSED_SPREAD)
    return features, labels


def loss_runner(op: str, mode: str, provider: str, features, labels) -> Runner:
    if provider == "floor":
        return floor_runner(mode, features)
    loss_fn = loss_function(op, provider)
    leaf = features.detach().clone().requires_grad_(True)
    if mode == "fwd":  # with grad enabled, as in training: the forward saves what backward needs
        return Runner(lambda: loss_fn(leaf, labels))
    if mode == "fwd+bwd":

        def forward_backward():
            leaf.grad = None
            loss_fn(leaf, labels).backward()

        return Runner(forward_backward)
    pending = {}

    def forward_untimed():
        leaf.grad = None
        pending["loss"] = loss_fn(leaf, labels)

    return Runner(lambda: pending.pop("loss").backward(), setup=forward_untimed)


def floor_runner(mode: str, features) -> Runner:
    unit = _unit_rows(features.detach())
    batch = unit.shape[0]
    gram = unit.new_empty(batch, batch)
    weights = torch.randn_like(gram)  # stands in for the elementwise-assembled backward matrix M
    grad_a, grad_b = torch.empty_like(unit), torch.empty_like(unit)

    def forward_product():
        torch.mm(unit, unit.T, out=gram)

    def backward_products():
        torch.mm(weights, unit, out=grad_a)
        torch.mm(weights.T, unit, out=grad_b)

    def all_three():
        forward_product()
        backward_products()

    return Runner({"fwd": forward_product, "bwd": backward_products, "fwd+bwd": all_three}[mode])


def pgd_eager_(delta, x, grad):
    return delta.copy_(ref.pgd_update(delta, x, grad, ALPHA, EPS))


def pgd_indexed_eager_(poison, index, x, grad):
    poison[index] = ref.pgd_update(poison[index], x, grad, ALPHA, EPS)
    return poison


def pgd_inputs(shape, device, seed: int = 0):
    generator = torch.Generator(device).manual_seed(seed)
    x = torch.rand(shape, generator=generator, device=device)
    delta = (torch.rand(shape, generator=generator, device=device) * 2 - 1) * EPS
    grad = torch.randn(shape, generator=generator, device=device)
    return delta, x, grad


def pgd_runner(provider: str, shape, device) -> Runner:
    """delta <- proj(delta - alpha sign(grad)) in place on tensors of `shape`."""
    delta, x, grad = pgd_inputs(shape, device)
    if provider == "floor":  # a copy of 2n elements reads 2n and writes 2n, as the update does
        source = torch.rand(2 * delta.numel(), device=device)
        target = torch.empty_like(source)
        return Runner(lambda: target.copy_(source))
    update = {
        "fused": lambda d, a, g: ops.pgd_update_(d, a, g, ALPHA, EPS),
        "eager": pgd_eager_,
        "compiled": compiled("pgd_update_", pgd_eager_),
    }[provider]
    return Runner(lambda: update(delta, x, grad))


def pgd_indexed_runner(provider: str, pool_rows: int, batch: int, device) -> Runner:
    """The rows poison[index] of a [pool_rows, 3, 32, 32] pool, as the generation engine updates them."""
    poison, _, _ = pgd_inputs((pool_rows, *IMAGE_SHAPE), device, seed=1)
    delta, x, grad = pgd_inputs((batch, *IMAGE_SHAPE), device, seed=2)
    index = torch.randperm(pool_rows, generator=torch.Generator(device).manual_seed(3), device=device)[:batch]
    if provider == "fused":  # check_index=False, as the engine calls it (the check syncs on CUDA)
        return Runner(lambda: ops.pgd_update_indexed_(poison, index, x, grad, ALPHA, EPS, check_index=False))
    update = {"eager": pgd_indexed_eager_, "compiled": compiled("pgd_update_indexed_", pgd_indexed_eager_)}[provider]
    return Runner(lambda: update(poison, index, x, grad))


# --------------------------------------------------------------------------- models of the work
def loss_flops(batch: int, dim: int, mode: str) -> int:
    return 2 * batch * batch * dim * PRODUCTS[mode]


def loss_min_bytes(batch: int, dim: int, mode: str, itemsize: int = 4) -> int:
    """Read the features (and labels) once; write the gradient once if the mode has a backward."""
    return batch * dim * itemsize * (1 if mode == "fwd" else 2) + batch * 8


def pgd_bytes(elements: int, itemsize: int = 4) -> int:
    return 4 * elements * itemsize  # read delta, x, grad; write delta
