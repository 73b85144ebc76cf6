"""--surrogate-cycles C: the epochs are split into C cycles, each after the first with freshly
drawn surrogate weights, no momentum from the old ones and the lr back at its start."""

import pytest
import torch

from miue_ext.errors import InputError
from miue_ext.generate import GenerationConfig, generate
from miue_ext.generate.engine import _Run

from generate_helpers import Crash, crash_at_epoch, single_threaded, tiny_patches  # noqa: F401  (autouse fixture)


def config(**overrides):
    base = dict(epochs=4, steps=2, batch_size=16, poison_batch_size=16, deterministic=True, seed=3)
    base.update(overrides)
    return GenerationConfig(**base)


def gen(cfg, **kwargs):
    kwargs.setdefault("log", lambda line: None)
    return generate(tiny_patches(40), cfg, device="cpu", model_name="smallcnn", **kwargs)


def new_run(cfg):
    return _Run(tiny_patches(40), cfg, None, "smallcnn", None, torch.device("cpu"), None, False, lambda line: None)


def weights(run):
    return {k: v.clone() for k, v in run.surrogate.state_dict().items()}


@pytest.mark.parametrize("cycles, epochs, message", [(3, 4, "must divide epochs"), (0, 4, "must be >= 1")])
def test_cycles_that_do_not_fit_are_refused(cycles, epochs, message):
    with pytest.raises(InputError, match=f"surrogate.cycles.*{message}|{message}.*"):
        config(surrogate_cycles=cycles, epochs=epochs).validate()


def test_cycle_starts():
    cfg = config(epochs=20, surrogate_cycles=4)
    assert [e for e in range(1, 21) if cfg.starts_cycle(e)] == [6, 11, 16]
    assert not any(config(epochs=20).starts_cycle(e) for e in range(1, 21))


def test_fresh_surrogate_is_a_new_seeded_draw_without_momentum():
    run = new_run(config(surrogate_cycles=2))
    initial = weights(run)
    # Train a little, so that weights, batch-norm statistics and momentum all move.
    run.surrogate.train()
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 8, (16,))
    _, logits = run.surrogate(x)
    torch.nn.functional.cross_entropy(logits, y).backward()
    run.optimizer.step()
    assert run.optimizer.state
    rng_before = torch.random.get_rng_state()
    run._fresh_surrogate(3)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global stream is untouched
    assert not run.optimizer.state
    fresh = weights(run)
    other = new_run(config(surrogate_cycles=2))
    other._fresh_surrogate(3)
    later = new_run(config(surrogate_cycles=2))
    later._fresh_surrogate(5)
    for name, value in fresh.items():
        assert torch.equal(value, weights(other)[name]), name  # reproducible (resume, every rank)
        if name.endswith("running_mean"):
            assert (value == 0).all()
        elif name.endswith("running_var"):
            assert (value == 1).all()
        elif name.endswith("weight") and value.dim() > 1:
            assert not torch.equal(value, initial[name]) and not torch.equal(value, weights(later)[name])
            # a real initialisation: the same scale as the construction's draw
            assert 0.8 < value.std() / initial[name].std() < 1.25, name


def test_lr_restarts_each_cycle_and_the_run_differs():
    cycled = gen(config(surrogate_cycles=2))
    plain = gen(config())
    assert [r["lr"] for r in cycled.history] == pytest.approx([0.1, 0.05, 0.1, 0.05], abs=1e-5)  # floor 1e-6
    assert plain.history[2]["lr"] < 0.06
    assert cycled.history[0]["train_loss"] == plain.history[0]["train_loss"]  # the same first epoch
    assert not torch.equal(cycled.delta, plain.delta)
    assert cycled.delta.abs().max() <= 8 / 255 + 1e-7


def test_resume_at_a_cycle_boundary_equals_uninterrupted_run(tmp_path):
    straight = gen(config(surrogate_cycles=2))
    with pytest.raises(Crash):
        gen(config(surrogate_cycles=2), checkpoint_dir=tmp_path, log=crash_at_epoch(3))
    resumed = gen(config(surrogate_cycles=2), checkpoint_dir=tmp_path, resume=True)
    assert torch.equal(resumed.delta, straight.delta)
    with pytest.raises(InputError, match="surrogate_cycles"):
        gen(config(), checkpoint_dir=tmp_path, resume=True)


def test_cli_names_the_option(tmp_path, capsys):
    from miue_ext.cli import main

    out = tmp_path / "p.npz"
    assert main(["generate", "--max-samples", "16", "--epochs", "4", "--surrogate-cycles", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "surrogate-cycles (3) must divide epochs (4)" in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "epochs, cycles",
    [(20, 4), (10, 2), (15, 3), (30, 3), (25, 1), (9, 1), (8, 1), (4, 1), (2, 1), (1, 1), (40, 4), (96, 4)]
    + [(100, 1), (200, 1), (120, 1)],
)
def test_auto_cycles_are_at_most_four_equal_cycles_of_five_epochs_or_more(epochs, cycles):
    """...in runs shorter than the paper's 100 epochs; from 100 on, the paper's single surrogate."""
    from miue_ext.generate.config import auto_surrogate_cycles

    assert auto_surrogate_cycles(epochs) == cycles
    config(epochs=epochs, surrogate_cycles=cycles).validate()  # always a valid split


def _parsed(argv):
    from miue_ext.cli import build_parser
    from miue_ext.commands.generate import build_config

    return build_config(build_parser().parse_args(["generate", *argv]), "cpu")


def test_cli_default_is_auto_for_miue_and_one_for_em():
    assert _parsed([]).surrogate_cycles == 4  # the CPU's 20 epochs
    assert _parsed(["--epochs", "10"]).surrogate_cycles == 2
    assert _parsed(["--epochs", "6"]).surrogate_cycles == 1
    assert _parsed(["--epochs", "100"]).surrogate_cycles == 1  # the GPU's default: the paper's loop
    assert _parsed(["--surrogate-cycles", "auto", "--epochs", "30"]).surrogate_cycles == 3
    assert _parsed(["--surrogate-cycles", "1"]).surrogate_cycles == 1
    assert _parsed(["--surrogate-cycles", "2", "--epochs", "4"]).surrogate_cycles == 2
    assert _parsed(["--method", "em"]).surrogate_cycles == 1  # the baseline keeps its published loop
    # auto means the method's own setting, as --objective auto gives em its ce; a number still applies
    assert _parsed(["--method", "em", "--surrogate-cycles", "auto"]).surrogate_cycles == 1
    assert _parsed(["--method", "em", "--surrogate-cycles", "4"]).surrogate_cycles == 4


@pytest.mark.parametrize("text", ["two", "2.5", ""])
def test_cli_refuses_cycles_that_are_not_a_number_or_auto(text, tmp_path, capsys):
    from miue_ext.cli import main

    out = tmp_path / "p.npz"
    assert main(["generate", "--surrogate-cycles", text, "--max-samples", "16", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--surrogate-cycles must be a whole number >= 1 or auto" in err and repr(text) in err
    assert not out.exists()


def test_the_run_announces_its_surrogate_cycles(tmp_path, capsys):
    from miue_ext.cli import main

    args = ["generate", "--max-samples", "16", "--steps", "1", "--no-progress", "--out"]
    assert main([*args, str(tmp_path / "a.npz"), "--epochs", "4", "--surrogate-cycles", "2"]) == 0
    assert "4 epochs x 1 steps (2 surrogates of 2 epochs each)" in capsys.readouterr().out
    assert main([*args, str(tmp_path / "b.npz"), "--epochs", "2"]) == 0
    assert "surrogates" not in capsys.readouterr().out  # one surrogate: nothing to say
