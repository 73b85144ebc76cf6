"""experiments/adversarial_poison.py, the class-targeted control poison of docs/evaluation.md:
its noise must stay in the budget and in [0, 1], and must actually move a frozen model's
predictions to the target class (a control that does nothing would read as "no poison works")."""

import numpy as np
import torch
from experiment_scripts import load_experiment
from torch import nn


def _colour_model(num_classes: int) -> nn.Module:
    """Logits from the mean colour: a model the crafting's random crop + flip cannot fool by
    moving the noise around, so an attack that works must show."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, num_classes, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():  # steep around mid-grey, so that an 8/255 change of colour can flip it
        model[0].weight.mul_(50)
        model[0].bias.copy_(-0.5 * model[0].weight.sum(dim=(1, 2, 3)))
    return model


def _predict(model, images_float_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(images_float_nhwc).permute(0, 3, 1, 2)).argmax(1).numpy()


def test_targeted_noise_moves_predictions_to_the_next_class_within_the_budget():
    craft = load_experiment("adversarial_poison").craft
    rng = np.random.default_rng(0)
    num_classes, side, eps = 4, 32, 8 / 255  # 32: the crop moves a small part of the image, as in use
    images = rng.integers(0, 256, size=(64, side, side, 3), dtype=np.uint8)
    images[:4] = 0  # black images: the [0, 1] projection allows only positive noise there
    labels = rng.integers(0, num_classes, size=64)
    model = _colour_model(num_classes)
    delta = craft(model, images, labels, num_classes, eps, 20, 2.5 * eps / 20, 16, 0, False, lambda _: None)
    clean = images.astype(np.float32) / 255
    assert delta.shape == images.shape
    assert np.abs(delta).max() <= eps + 1e-6
    assert (clean + delta).min() >= -1e-6 and (clean + delta).max() <= 1 + 1e-6
    assert delta[:4].min() >= 0
    target = (labels + 1) % num_classes
    before = np.mean(_predict(model, clean) == target)
    after = np.mean(_predict(model, clean + delta) == target)
    assert after > before + 0.5, (before, after)


def test_untargeted_noise_moves_predictions_away_from_the_label():
    craft = load_experiment("adversarial_poison").craft
    rng = np.random.default_rng(1)
    num_classes, side, eps = 3, 32, 8 / 255
    images = rng.integers(0, 256, size=(48, side, side, 3), dtype=np.uint8)
    model = _colour_model(num_classes)
    clean = images.astype(np.float32) / 255
    labels = _predict(model, clean)  # the model is right on every image before the attack
    delta = craft(model, images, labels, num_classes, eps, 20, 2.5 * eps / 20, 16, 0, True, lambda _: None)
    assert np.mean(_predict(model, clean + delta) == labels) < 0.5
