"""End to end: one poison-generation step (ResNet-18 surrogate forward+backward to the input,
then the update) on a batch of 3x32x32 images; fused engine path vs the authors' eager loop."""

import cases


def test_generation_step(step_case, measure, bench_settings):
    runner = cases.generation_step_runner(step_case.provider, step_case.batch, bench_settings.device)
    measure(
        runner,
        f"generation_step batch={step_case.batch}",
        {
            "kind": "generation_step",
            "op": "generation_step",
            "provider": step_case.provider,
            "batch": step_case.batch,
            "model": "resnet18",
        },
        min_rounds=1 if bench_settings.grid == "quick" else 3,
    )  # a step is seconds on a CPU: 3, not 1
