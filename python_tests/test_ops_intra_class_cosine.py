"""intra_class_cosine (the mean cosine between same-class rows, the poison statistic) against the
float64 reference: the checks every op of (features, labels) passes (FeatureOpContract in
test_ops_loss.py), and its own edge cases."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import miue_ext.ops as ops
import miue_ext.reference as reference
from miue_ext.bench import intra_class_cosine_eager
from helpers import assert_matches_reference
from test_ops_loss import (
    FeatureOpContract,
    assert_gradcheck_float64,
    assert_low_precision_within_twice_eager_error,
    random_problem,
)


class TestIntraClassCosine(FeatureOpContract):
    @pytest.fixture
    def name(self):
        return "intra_class_cosine"


def test_batch_of_one(device):
    features, labels = random_problem(1, 7, 1, device)
    value, grad = assert_matches_reference("intra_class_cosine", features, labels)
    assert torch.isnan(value)  # no pair i != j: the mean over an empty set
    assert torch.all(grad == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_within_twice_eager_error(dtype, device):
    assert_low_precision_within_twice_eager_error(
        ops.intra_class_cosine, intra_class_cosine_eager, reference.intra_class_cosine, dtype, device
    )


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 40),
    dim=st.integers(1, 20),
    classes=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_shapes_property(batch, dim, classes, seed):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, dim, dtype=torch.float64, generator=generator)
    labels = torch.randint(0, classes, (batch,), generator=generator)
    assert_matches_reference("intra_class_cosine", features, labels)


def test_gradcheck_float64(device):
    assert_gradcheck_float64("intra_class_cosine", device)
