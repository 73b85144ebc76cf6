"""--perturb-flip: the clean image (not delta) is flipped in the perturbation stage, and the
[0, 1] projection is against the flipped image, as in the authors' loop."""

import contextlib

import torch
from torch import nn

from miue_ext.generate import steps

from generate_helpers import on_off_on_runs, single_threaded, tiny_patches  # noqa: F401  (autouse fixture)


class Pixels(nn.Module):
    """A surrogate whose features are the input pixels themselves."""

    def forward(self, x):
        return x.flatten(1), torch.zeros(x.shape[0], 2)


def test_flipped_clean_image_unflipped_delta():
    # Left half black, right half white; the objective sum(pixels) pushes every pixel down, so
    # delta can move only where x + delta stays >= 0, i.e. on the white half of what is seen.
    images = torch.zeros(2, 4, 6, 1, dtype=torch.uint8)
    images[:, :, 3:] = 255
    labels = torch.zeros(2, dtype=torch.long)
    alpha = eps = 4 / 255
    runs = {}
    for flip_first in (False, True):
        delta = torch.zeros(2, 4, 6, 1)
        mask = torch.tensor([flip_first, False])
        steps.perturb_samplewise(
            Pixels(),
            lambda f, logits, y: f.sum(),
            images,
            labels,
            delta,
            torch.arange(2),
            batch_size=2,
            steps=1,
            alpha=alpha,
            eps=eps,
            amp=contextlib.nullcontext,
            channels_last=False,
            on_batch=lambda *a: None,
            flip_mask=mask,
        )
        runs[flip_first] = delta
    unflipped, flipped = runs[False], runs[True]
    assert torch.equal(unflipped[1], flipped[1])  # the unmasked sample is the same either way
    moved = torch.full((4, 3, 1), -eps)  # x + delta is rounded in float32: compare to 1e-7
    torch.testing.assert_close(unflipped[0, :, 3:], moved, rtol=0, atol=1e-7)
    assert (unflipped[0, :, :3] == 0).all()
    # the masked sample saw white on the left: its delta moved there, in delta's own coordinates
    torch.testing.assert_close(flipped[0, :, :3], moved, rtol=0, atol=1e-7)
    assert (flipped[0, :, 3:] == 0).all()


def test_engine_with_perturb_flip_is_bounded_reproducible_and_differs():
    data = tiny_patches(48)
    runs = on_off_on_runs(data, "perturb_flip")
    assert torch.equal(runs[0].delta, runs[1].delta) and not torch.equal(runs[0].delta, runs[2].delta)
    assert runs[0].delta.abs().max() <= 8 / 255 + 1e-7 and runs[0].delta.abs().max() > 3 / 255
