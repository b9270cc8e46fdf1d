"""The objective against values computed by hand."""

import math

import numpy as np
import pytest
import torch

from engine.objective import (
    anomaly_scores,
    centroids_from_mean,
    hard_boundary_loss,
    layer_scores,
    one_class_loss,
    soft_boundary_loss,
    squared_distances,
    updated_radii,
)


def test_centroid_near_zero_rule():
    c = centroids_from_mean([torch.tensor([0.05, -0.05, 0.0, 0.2, -0.3, 0.0999])])[0]
    assert c.tolist() == pytest.approx([0.1, -0.1, 0.0, 0.2, -0.3, 0.1])
    plain = centroids_from_mean([torch.tensor([0.05, -0.05])], eps=None)[0]
    assert plain.tolist() == pytest.approx([0.05, -0.05])


def test_squared_distances_by_hand():
    feats = [torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[3.0], [1.0]])]
    cents = [torch.tensor([1.0, 0.0]), torch.tensor([0.0])]
    dist = squared_distances(feats, cents)
    assert dist.tolist() == [[4.0, 1.0], [9.0, 1.0]]


def test_soft_and_hard_losses_by_hand():
    dist = torch.tensor([[4.0, 1.0], [9.0, 1.0]])  # (L=2, B=2)
    radii = torch.tensor([1.0, 2.0])
    # layer 0: R^2 = 1, hinge mean = (3 + 0) / 2 = 1.5; layer 1: R^2 = 4, hinge mean = (5 + 0) / 2 = 2.5
    expected_soft = 1 + (1 + 4) + (1.5 + 2.5) / 0.5
    assert soft_boundary_loss(dist, radii, nu=0.5).item() == pytest.approx(expected_soft)
    assert hard_boundary_loss(dist).item() == pytest.approx(1 + 2.5 + 5.0)
    assert one_class_loss(dist, radii, 0.5, "hard").item() == pytest.approx(8.5)
    assert one_class_loss(dist, radii, 0.5, "soft").item() == pytest.approx(expected_soft)


def test_radius_is_numpy_linear_quantile_of_norms():
    gen = torch.Generator().manual_seed(0)
    dist = torch.rand(3, 37, generator=gen) * 5
    for nu in (0.01, 0.1, 0.5):
        expected = np.quantile(np.sqrt(dist.numpy()), 1 - nu, axis=1)
        assert updated_radii(dist, nu).numpy() == pytest.approx(expected, rel=1e-5)


def test_scores_soft_hard_squared_plain():
    dist = torch.tensor([[4.0, 1.0], [9.0, 16.0]])
    radii = torch.tensor([1.0, 2.0])
    assert layer_scores(dist, radii, "soft").tolist() == [[3.0, 0.0], [5.0, 12.0]]
    assert layer_scores(dist, radii, "soft", squared=False).tolist() == [[1.0, 0.0], [1.0, 2.0]]
    assert anomaly_scores(dist, radii, "hard").tolist() == [6.5, 8.5]
    assert anomaly_scores(dist, radii, "hard", squared=False).tolist() == [2.5, 2.5]
    # soft and hard scores differ by a per-layer constant: same ranking
    soft, hard = anomaly_scores(dist, radii, "soft"), anomaly_scores(dist, radii, "hard")
    assert torch.allclose(hard - soft, torch.full_like(soft, (1 + 4) / 2))
    assert not math.isnan(soft.sum().item())
