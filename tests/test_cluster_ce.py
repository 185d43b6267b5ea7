"""The cross-entropy baseline: a linear classifier over clusters on encoder features."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clinfo_ray.losses import ClusterCrossEntropy


def test_equals_cross_entropy_of_its_linear_layer_over_all_views() -> None:
    torch.manual_seed(0)
    head = ClusterCrossEntropy(feature_dim=8, num_clusters=5)
    features = torch.randn(6, 2, 8)
    ids = torch.tensor([0, 4, 2, 2, 1, 3])
    expected = F.cross_entropy(
        features.flatten(0, 1) @ head.classifier.weight.T + head.classifier.bias,
        ids.repeat_interleave(2),
    )
    torch.testing.assert_close(head(features, ids), expected)


def test_zero_weights_give_log_k_and_training_learns_separable_clusters() -> None:
    torch.manual_seed(1)
    head = ClusterCrossEntropy(feature_dim=4, num_clusters=3)
    torch.nn.init.zeros_(head.classifier.weight)
    torch.nn.init.zeros_(head.classifier.bias)
    centres = torch.eye(3, 4) * 5
    ids = torch.randint(0, 3, (90,))
    features = centres[ids] + 0.1 * torch.randn(90, 4)
    assert head(features, ids).item() == pytest.approx(math.log(3))
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        head(features, ids).backward()
        opt.step()
    accuracy = (head.logits(features).argmax(1) == ids).float().mean().item()
    assert accuracy == 1.0 and head(features, ids).item() < 0.05


def test_out_of_range_ids_and_bad_shapes_fail_clearly() -> None:
    head = ClusterCrossEntropy(feature_dim=4, num_clusters=3)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        head(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="cluster_ids"):
        head(torch.randn(2, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="num_clusters >= 2"):
        ClusterCrossEntropy(4, 1)
