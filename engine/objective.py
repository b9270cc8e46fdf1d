"""The MOCCA objective (METHOD.md 2.3, 3.4-3.5): centroids, multi-layer soft/hard losses, radii, anomaly scores.

Shapes: L selected layers, B samples. Per-layer features arrive as a list of L tensors (B, D_k); distances are
one (L, B) tensor of squared Euclidean distances to the layer centroids; radii are an (L,) tensor, kept on the
device so training never waits on the host. K models packed into one (engine/models/packed.py) add a trailing
model axis everywhere: features (B, K, D_k), centroids (K, D_k), distances (L, B, K), radii (L, K), and the losses
come back per model, (K,); every function here broadcasts over it unchanged.

    >>> import torch
    >>> c = centroids_from_mean([torch.tensor([0.05, -0.02, 0.0, 0.3])])
    >>> c[0].tolist()
    [0.10000000149011612, -0.10000000149011612, 0.0, 0.30000001192092896]
"""

from __future__ import annotations

import torch

BOUNDARIES = ("soft", "hard")


def centroids_from_mean(means: list[torch.Tensor], eps: float | None = 0.1) -> list[torch.Tensor]:
    """Apply the reference's near-zero rule: entries with |c| < eps move to +-eps by sign; exact zeros stay 0.

    `eps=None` (or 0) keeps the plain means.
    """
    if not eps:
        return [m.clone() for m in means]
    out = []
    for c in means:
        c = c.clone()
        small = c.abs() < eps
        c[small & (c < 0)] = -eps
        c[small & (c > 0)] = eps
        out.append(c)
    return out


def squared_distances(features: list[torch.Tensor], centroids: list[torch.Tensor]) -> torch.Tensor:
    """(L, B) squared L2 distance of each sample's layer vector to that layer's centroid ((L, B, K) when packed)."""
    return torch.stack([((f - c) ** 2).sum(dim=-1) for f, c in zip(features, centroids, strict=True)])


def soft_boundary_loss(dist: torch.Tensor, radii: torch.Tensor, nu: float) -> torch.Tensor:
    """1 + sum_k [ R_k^2 + (1/nu) * mean_i max(0, dist_k(x_i) - R_k^2) ] (layers summed, not averaged)."""
    r2 = (radii**2).unsqueeze(1)  # (L, 1), or (L, 1, K)
    return 1 + (radii**2).sum(dim=0) + torch.clamp(dist - r2, min=0).mean(dim=1).sum(dim=0) / nu


def hard_boundary_loss(dist: torch.Tensor) -> torch.Tensor:
    """1 + sum_k mean_i dist_k(x_i)."""
    return 1 + dist.mean(dim=1).sum(dim=0)


def one_class_loss(dist: torch.Tensor, radii: torch.Tensor, nu: float, boundary: str) -> torch.Tensor:
    if boundary == "soft":
        return soft_boundary_loss(dist, radii, nu)
    assert boundary == "hard", boundary
    return hard_boundary_loss(dist)


def updated_radii(dist: torch.Tensor, nu: float) -> torch.Tensor:
    """(L,) per-layer (1 - nu)-quantile of sqrt(dist) over the batch ((L, K) when packed), linear interpolation
    (numpy's default)."""
    return torch.quantile(dist.detach().float().sqrt(), 1 - nu, dim=1)


def layer_scores(dist: torch.Tensor, radii: torch.Tensor, boundary: str, squared: bool = True) -> torch.Tensor:
    """(L, B) per-layer score terms: soft subtracts R^2 (squared) or R (plain L2); hard is the distance itself."""
    if squared:
        d, r = dist, radii**2
    else:
        d, r = dist.sqrt(), radii
    if boundary == "soft":
        return d - r.unsqueeze(1)
    assert boundary == "hard", boundary
    return d


def anomaly_scores(dist: torch.Tensor, radii: torch.Tensor, boundary: str, squared: bool = True) -> torch.Tensor:
    """(B,) the combined score: mean over the selected layers of `layer_scores`."""
    return layer_scores(dist, radii, boundary, squared).mean(dim=0)
