"""Plain PyTorch versions of every op, independent of the fused kernels.

* ``sim_loss``, ``dist_loss``, ``mi_ue_loss``, ``intra_class_cosine``, ``pgd_update``: the
  docs/method.md formulas written as directly as possible, in float64 (tests compare against these).
* ``mi_ue_loss_eager``: what a careful PyTorch user writes (F.normalize + matmul + cdist), in
  the input's dtype: the "eager" baseline of the benchmarks and of the low-precision tests.
* ``mi_ue_loss_authors``: the structure of the authors' released code (a [B, B, D] broadcast
  for the cosines, a per-row Python loop for the distances): the slow baseline.
"""

import torch
import torch.nn.functional as F

NORM_FLOOR = 1e-8
EXP_OFFSET = 1e-8


def _check(features, labels):
    if features.dim() != 2:
        raise ValueError(f"features must be a 2-D tensor [B, D], got shape {tuple(features.shape)}")
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels must be [B] with B = {features.shape[0]}, got shape {tuple(labels.shape)}")


def cosine_matrix(features):
    """c_ij = <f_i, f_j> / (max(|f_i|, 1e-8) max(|f_j|, 1e-8)), float64."""
    f = features.double()
    norms = torch.linalg.vector_norm(f, dim=1).clamp_min(NORM_FLOOR)
    unit = f / norms[:, None]
    return unit @ unit.T


def _safe_norm(diff):
    """|v| with gradient 0 at v = 0 (docs/method.md), instead of sqrt's NaN."""
    square = (diff * diff).sum(-1)
    positive = square > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, square, torch.ones_like(square))), 0.0)


def sim_loss(features, labels, temperature=0.1):
    _check(features, labels)
    same = labels[:, None] == labels[None, :]
    e = torch.exp(cosine_matrix(features) / temperature) + EXP_OFFSET
    positive = (e * same).sum(1)
    everything = e.sum(1)
    return -torch.log(positive / everything).mean()


def pairwise_distances(features):
    """|f_i - f_j| from explicit differences ([B, B, D] memory: tests only), float64."""
    f = features.double()
    return _safe_norm(f[:, None, :] - f[None, :, :])


def dist_loss(features, labels):
    _check(features, labels)
    same = labels[:, None] == labels[None, :]
    d = features.shape[1]
    return torch.log1p((pairwise_distances(features) * same).sum(1) / d).mean()


def mi_ue_loss(features, labels, temperature=0.1, zeta=0.1):
    return sim_loss(features, labels, temperature) + zeta * dist_loss(features, labels)


def intra_class_cosine(features, labels):
    """Mean of c_ij over same-class pairs i != j (NaN when there is none, like torch.mean([]))."""
    _check(features, labels)
    batch = features.shape[0]
    pairs = (labels[:, None] == labels[None, :]) & ~torch.eye(batch, dtype=torch.bool, device=labels.device)
    return cosine_matrix(features)[pairs].mean()


def pgd_update(delta, x, grad, alpha, eps):
    """The update of docs/method.md in the dtype of its inputs, out of place."""
    return torch.clamp(x + torch.clamp(delta - alpha * torch.sign(grad), -eps, eps), 0, 1) - x


# --------------------------------------------------------------------------- baselines
def mi_ue_loss_eager(features, labels, temperature=0.1, zeta=0.1):
    """Idiomatic eager PyTorch in the input's dtype: one matmul for cosines, cdist for distances."""
    unit = features / torch.linalg.vector_norm(features, dim=1, keepdim=True).clamp_min(NORM_FLOOR)
    same = (labels[:, None] == labels[None, :]).to(features.dtype)
    e = torch.exp(unit @ unit.T / temperature) + EXP_OFFSET
    sim = -torch.log((e * same).sum(1) / e.sum(1)).mean()
    if zeta == 0:
        return sim
    dist = torch.cdist(features, features)
    return sim + zeta * torch.log1p((dist * same).sum(1) / features.shape[1]).mean()


def mi_ue_loss_authors(features, labels, temperature=0.1, zeta=0.1):
    """The authors' structure: [B, B, D] broadcast cosine, Python loop over rows for distances."""
    cos = F.cosine_similarity(features[:, None, :], features[None, :, :], dim=-1, eps=NORM_FLOOR)
    same = (labels[:, None] == labels[None, :]).to(features.dtype)
    e = torch.exp(cos / temperature) + EXP_OFFSET
    sim = -torch.log((e * same).sum(1) / e.sum(1)).mean()
    if zeta == 0:
        return sim
    terms = []
    for i in range(features.shape[0]):
        members = features[labels == labels[i]]
        terms.append(torch.log1p(_safe_norm(features[i] - members).sum() / features.shape[1]))
    return sim + zeta * torch.stack(terms).mean()
