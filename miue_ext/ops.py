"""Thin Python wrappers over the fused torch.ops.miue operators, plus their fake (meta) and
autograd registrations so that they work under autograd, torch.compile and opcheck.

Non-finite features (NaN or inf) give a NaN loss and NaN gradients, as PyTorch's losses do.
"""

import contextlib

import torch

from . import _extension  # noqa: F401  (registers torch.ops.miue)

_ops = torch.ops.miue

# Above this many B x B entries the loss works on row blocks (docs/method.md: memory O(B*B + B*D)
# becomes O(tile*B + B*D)). The policy lives here alone: the ops take the chosen tile_rows.
TILE_ELEMENTS = 1 << 24


def rows_per_tile(batch, tile_rows=0):
    """Rows per tile of the loss ops: `tile_rows` if > 0 (at most `batch`), else all `batch`
    rows while B x B <= TILE_ELEMENTS and TILE_ELEMENTS // B rows above."""
    if tile_rows < 0:
        raise ValueError(f"tile_rows must be >= 0 (0: automatic), got {tile_rows}")
    if tile_rows > 0:
        return max(1, min(batch, tile_rows))
    if batch * batch <= TILE_ELEMENTS:
        return max(1, batch)
    return max(1, TILE_ELEMENTS // batch)


def _accumulator_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- fake kernels
def _check_loss_args(features, labels):
    """The checks of csrc/common/checks.h that depend only on metadata, for the fake kernels."""
    torch._check(
        features.dim() == 2, lambda: f"features must be a 2-D tensor [B, D], got shape {tuple(features.shape)}"
    )
    torch._check(labels.dim() == 1, lambda: f"labels must be a 1-D tensor [B], got shape {tuple(labels.shape)}")
    torch._check(
        labels.device == features.device,
        lambda: f"labels must be on the same device as features ({features.device}), got {labels.device}",
    )


@torch.library.register_fake("miue::mi_ue_loss_forward")
def _mi_ue_loss_forward_fake(features, labels, temperature, sim_weight, dist_weight, tile_rows):
    _check_loss_args(features, labels)
    batch = features.shape[0]
    acc = _accumulator_dtype(features.dtype)
    stats = features.new_empty((batch, 4), dtype=acc)
    if tile_rows >= batch:
        gram = features.new_empty((batch, batch), dtype=acc)
    else:
        gram = features.new_empty((0, 0), dtype=acc)
    # Only the CPU kernels return the near-duplicate pairs' gradient (csrc/mi_ue_loss.h), and only
    # untiled with the distance term on.
    if features.device.type == "cpu" and dist_weight != 0 and tile_rows >= batch:
        near_dup = features.new_empty((batch, features.shape[1]), dtype=acc)
    else:
        near_dup = features.new_empty((0, 0), dtype=acc)
    return features.new_empty(()), stats, gram, near_dup


@torch.library.register_fake("miue::mi_ue_loss_backward")
def _mi_ue_loss_backward_fake(
    grad, features, labels, row_stats, gram, near_dup, temperature, sim_weight, dist_weight, tile_rows
):
    return torch.empty_like(features, memory_format=torch.contiguous_format)


@torch.library.register_fake("miue::intra_class_cosine_forward")
def _intra_class_cosine_forward_fake(features, labels):
    _check_loss_args(features, labels)
    return features.new_empty(())


@torch.library.register_fake("miue::intra_class_cosine_backward")
def _intra_class_cosine_backward_fake(grad, features, labels):
    return torch.empty_like(features, memory_format=torch.contiguous_format)


@torch.library.register_fake("miue::pgd_update_")
def _pgd_update_fake(delta, x, grad, alpha, eps):
    return None


@torch.library.register_fake("miue::pgd_update_indexed_")
def _pgd_update_indexed_fake(poison, index, x, grad, alpha, eps, check_index=True):
    return None


# --------------------------------------------------------------------------- autograd
def _loss_setup_context(ctx, inputs, output):
    features, labels, temperature, sim_weight, dist_weight, tile_rows = inputs
    _, row_stats, gram, near_dup = output
    ctx.save_for_backward(features, labels, row_stats, gram, near_dup)
    ctx.params = (temperature, sim_weight, dist_weight, tile_rows)
    # The statistics, the Gram matrix and near_dup are never differentiated: without this, autograd
    # would allocate and zero-fill a [B, 4], a [B, B] and a [B, D] gradient on every backward.
    ctx.set_materialize_grads(False)


def _loss_backward(ctx, grad_loss, grad_stats, grad_gram, grad_near_dup):
    features, labels, row_stats, gram, near_dup = ctx.saved_tensors
    grad_features = None
    if ctx.needs_input_grad[0] and grad_loss is not None:
        grad_features = _ops.mi_ue_loss_backward(grad_loss, features, labels, row_stats, gram, near_dup, *ctx.params)
    return grad_features, None, None, None, None, None


torch.library.register_autograd("miue::mi_ue_loss_forward", _loss_backward, setup_context=_loss_setup_context)


def _cosine_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _cosine_backward(ctx, grad_value):
    features, labels = ctx.saved_tensors
    grad_features = None
    if ctx.needs_input_grad[0]:
        grad_features = _ops.intra_class_cosine_backward(grad_value, features, labels)
    return grad_features, None


torch.library.register_autograd(
    "miue::intra_class_cosine_forward", _cosine_backward, setup_context=_cosine_setup_context
)


# --------------------------------------------------------------------------- autocast
# Like PyTorch's own losses, the loss ops run in float32 inside an autocast region: features of
# any floating dtype are cast to float32 (differentiably, so bf16/fp16 features get their
# gradient back in their own dtype) and the result is float32. The kernels themselves also
# exclude autocast and TF32 (csrc/common/full_precision.h), which covers the backward ops when
# backward() runs inside the region. pgd_update_ and pgd_update_indexed_ are elementwise and
# run in the dtype of delta/poison, autocast or not.
AUTOCAST_DTYPE = torch.float32
for _op in ("miue::mi_ue_loss_forward", "miue::intra_class_cosine_forward"):
    for _device in ("cpu", "cuda"):
        torch.library.register_autocast(_op, _device, AUTOCAST_DTYPE)


# --------------------------------------------------------------------------- public API
def mi_ue_loss(features, labels, temperature=0.1, zeta=0.1, *, tile_rows=0):
    """L_sim + zeta * L_dist of docs/method.md for features [B, D] and integer labels [B]; a 0-d tensor."""
    tile = rows_per_tile(features.shape[0], int(tile_rows))
    return _ops.mi_ue_loss_forward(features, labels, float(temperature), 1.0, float(zeta), tile)[0]


def sim_loss(features, labels, temperature=0.1, *, tile_rows=0):
    """L_sim alone: -mean_i log(sum_{same class} e_ij / sum_j e_ij), e_ij = exp(cos_ij / t) + 1e-8."""
    tile = rows_per_tile(features.shape[0], int(tile_rows))
    return _ops.mi_ue_loss_forward(features, labels, float(temperature), 1.0, 0.0, tile)[0]


def dist_loss(features, labels, *, tile_rows=0):
    """L_dist alone: mean_i log(1 + (1/D) sum_{same class} |f_i - f_j|)."""
    tile = rows_per_tile(features.shape[0], int(tile_rows))
    return _ops.mi_ue_loss_forward(features, labels, 1.0, 0.0, 1.0, tile)[0]


def intra_class_cosine(features, labels):
    """Mean cosine similarity over same-class pairs i != j (NaN when no class has two members)."""
    return _ops.intra_class_cosine_forward(features, labels)


@contextlib.contextmanager
def _updated_in_place(name: str, tensor: torch.Tensor, argument: str):
    """Around an in-place update: it is not differentiable, so a tensor that autograd tracks is
    refused (as torch refuses in-place ops on leaves); afterwards the version counter is bumped, so
    that autograd refuses a graph that saved the old values instead of using the new ones."""
    if tensor.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            f"{name}: {argument} requires grad, but the update is not differentiable; call it under "
            f"torch.no_grad() or on a tensor that does not require grad"
        )
    yield
    if not torch.compiler.is_compiling():  # a compiled graph tracks the mutation itself
        torch.autograd.graph.increment_version(tensor)


def pgd_update_(delta, x, grad, alpha, eps):
    """In place: delta <- clamp(x + clamp(delta - alpha*sign(grad), -eps, eps), 0, 1) - x. Returns delta."""
    with _updated_in_place("pgd_update_", delta, "delta"):
        _ops.pgd_update_(delta, x, grad, float(alpha), float(eps))
    return delta


def pgd_update_indexed_(poison, index, x, grad, alpha, eps, check_index=True):
    """pgd_update_ on the rows poison[index] in place, without a gather/scatter copy. Returns poison.

    x and grad are [B, *poison.shape[1:]] with B = len(index). Indices must be distinct (like
    index_put_ without accumulate, duplicates update in an unspecified order). check_index=False
    skips the range check, which costs a host sync on CUDA (the kernel still asserts).
    """
    with _updated_in_place("pgd_update_indexed_", poison, "poison"):
        _ops.pgd_update_indexed_(poison, index, x, grad, float(alpha), float(eps), bool(check_index))
    return poison
