"""What the suite measures: the size grids, and the end-to-end generation step.

The per-op providers (fused, eager, authors, compiled, floor) live in miue_ext.bench, so that
`miue bench` runs exactly the same code without the source tree; this module picks the cases.

Grids (pytest --bench-grid or MIUE_BENCH_GRID):
  quick    tiny sizes, every op and provider once: seconds, for CI (with --benchmark-disable)
  targets  only what the targets table of RESULTS.md needs (ceilings, B=512 D=512 C=10 with
           random and collapsed features, pgd_update_ at 2^26, the generation step, the memory
           case): the first benchmark step of gpu_check.sh, about a minute on an H100
  default  CPU: the issue's target size and a few around it, about 10 minutes on 2 cores;
           CUDA: the GPU sizes of the issue (gpu_check.sh), a few minutes on an H100
           (test order: see priority(), so that a run stopped at a time limit keeps the targets)
  full     the issue's whole grid: B in {128, 512, 2048, 8192} x D in {128, 512, 2048} x
           C in {10, 100}, every provider wherever it fits (hours on a CPU)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from miue_ext import bench

FULL_BATCHES, FULL_DIMS, FULL_CLASSES = (128, 512, 2048, 8192), (128, 512, 2048), (10, 100)
TARGET_SIZE = (512, 512, 10)  # the targets: B=512 D=512 C=10
MEMORY_SIZE = (8192, 2048, 10)  # the memory target
# On a CPU the authors' structure takes about 10 s per forward+backward at B=D=512 (2 cores);
# the default grid runs it only up to that much work.
AUTHORS_CPU_DEFAULT_MAX_WORK = 512**3


@dataclass(frozen=True)
class LossCase:
    op: str
    mode: str
    provider: str
    batch: int
    dim: int
    classes: int
    features: str = "randn"  # or "collapsed" (bench.loss_inputs)

    @property
    def id(self):
        kind = "" if self.features == "randn" else f"-{self.features}"
        return f"{self.op}-{self.mode}-B{self.batch}-D{self.dim}-C{self.classes}{kind}-{self.provider}"

    @property
    def group(self):
        kind = "" if self.features == "randn" else f" {self.features}"
        return f"{self.op} {self.mode} B={self.batch} D={self.dim} C={self.classes}{kind}"


@dataclass(frozen=True)
class UpdateCase:
    op: str  # pgd_update_ or pgd_update_indexed_
    provider: str
    shape: tuple  # pgd_update_: the tensors' shape; pgd_update_indexed_: (pool rows, batch)

    @property
    def elements(self):
        if self.op == "pgd_update_":
            return _prod(self.shape)
        return self.shape[1] * _prod(bench.IMAGE_SHAPE)

    @property
    def size_label(self):
        if self.op == "pgd_update_":
            return "x".join(map(str, self.shape))
        return f"pool{self.shape[0]}-batch{self.shape[1]}"

    @property
    def id(self):
        return f"{self.op}-{self.size_label}-{self.provider}"

    @property
    def group(self):
        return f"{self.op} {self.size_label}"


@dataclass(frozen=True)
class StepCase:
    provider: str  # fused_engine or eager_authors
    batch: int

    @property
    def id(self):
        return f"generation_step-batch{self.batch}-{self.provider}"


def _prod(values):
    out = 1
    for value in values:
        out *= value
    return out


# --------------------------------------------------------------------------- grids
def loss_cases(grid: str, device: torch.device) -> list[LossCase]:
    cases = []

    def add(op, modes, sizes, providers, features="randn"):
        for mode, (batch, dim, classes), provider in itertools.product(modes, sizes, providers):
            if provider == "floor" and op == "intra_class_cosine":
                continue  # O(B D): no matrix product to compare with
            if provider == "authors" and not _authors_runs(grid, device, batch, dim, mode):
                continue
            cases.append(LossCase(op, mode, provider, batch, dim, classes, features))

    other_ops = ("sim_loss", "dist_loss", "intra_class_cosine")
    everyone = bench.LOSS_PROVIDERS
    no_compile = tuple(p for p in everyone if p != "compiled")
    if grid == "quick":
        add("mi_ue_loss", bench.MODES, [(64, 32, 10)], no_compile)
        add("mi_ue_loss", ["fwd+bwd"], [(64, 32, 10)], ["compiled"])
        add("mi_ue_loss", ["fwd+bwd"], [(64, 32, 10)], ("fused", "eager"), "collapsed")
        for op in other_ops:
            add(op, ["fwd+bwd"], [(64, 32, 10)], no_compile)
    elif grid == "targets":
        add("mi_ue_loss", bench.MODES, [TARGET_SIZE], ("fused", "eager", "floor"))
        add("mi_ue_loss", ["fwd+bwd"], [TARGET_SIZE], ("authors", "compiled"))
        add("mi_ue_loss", bench.MODES, [TARGET_SIZE], ("fused", "eager"), "collapsed")
        add("mi_ue_loss", ["fwd+bwd"], [MEMORY_SIZE], ["fused"])
    elif grid == "full":
        sizes = list(itertools.product(FULL_BATCHES, FULL_DIMS, FULL_CLASSES))
        add("mi_ue_loss", bench.MODES, sizes, everyone)
        for op in other_ops:
            add(op, ["fwd+bwd"], sizes, everyone)
    elif device.type == "cuda":  # fwd+bwd over B x D; the single passes along B at D=512
        sizes = list(itertools.product(FULL_BATCHES, FULL_DIMS, (10,))) + [(512, 512, 100), (8192, 2048, 100)]
        add("mi_ue_loss", ["fwd+bwd"], sizes, no_compile)
        add("mi_ue_loss", ["fwd", "bwd"], [(b, 512, 10) for b in FULL_BATCHES] + [MEMORY_SIZE], no_compile)
        add("mi_ue_loss", bench.MODES, [TARGET_SIZE], ["compiled"])
        add("mi_ue_loss", ["fwd+bwd"], [MEMORY_SIZE], ["compiled"])
        add("mi_ue_loss", bench.MODES, [TARGET_SIZE, (2048, 512, 10)], ("fused", "eager"), "collapsed")
        for op in other_ops:
            add(op, ["fwd+bwd"], [TARGET_SIZE, MEMORY_SIZE], no_compile)
            add(op, ["fwd+bwd"], [TARGET_SIZE], ["compiled"])
    else:  # default grid on a CPU
        sizes = [(128, 512, 10), TARGET_SIZE, (2048, 512, 10), (512, 128, 10), (512, 2048, 10), (512, 512, 100)]
        add("mi_ue_loss", bench.MODES, sizes, ("fused", "eager", "floor"))
        add("mi_ue_loss", ["fwd+bwd"], sizes, ["authors"])
        add("mi_ue_loss", bench.MODES, [TARGET_SIZE], ["compiled"])
        add("mi_ue_loss", ["fwd+bwd"], [MEMORY_SIZE], ["fused"])  # the memory target
        add("mi_ue_loss", bench.MODES, [TARGET_SIZE], ("fused", "eager"), "collapsed")
        for op in other_ops:
            add(op, ["fwd+bwd"], [TARGET_SIZE], everyone)
            add(op, ["fwd+bwd"], [(2048, 512, 10)], ("fused", "eager", "floor"))
    return cases


def _authors_runs(grid, device, batch, dim, mode):
    if not bench.authors_fits(batch, dim, device):
        return False
    if device.type == "cpu" and grid == "default":
        return batch * batch * dim <= AUTHORS_CPU_DEFAULT_MAX_WORK and mode == "fwd+bwd"
    return True


def update_cases(grid: str, device: torch.device) -> list[UpdateCase]:
    image = bench.IMAGE_SHAPE
    if grid == "quick":
        shapes, indexed, compiled_shapes = [(64, *image)], [(256, 64)], []
    elif grid == "targets":
        shapes, indexed, compiled_shapes = [(1 << 26,)], [], [(1 << 26,)]
    elif device.type == "cuda" or grid == "full":
        shapes = [(512, *image), (50000, *image), (1 << 26,)]
        indexed, compiled_shapes = [(512, 512), (50000, 512)], shapes + [(50000, 512)]
    else:
        shapes = [(512, *image), (50000, *image)]
        indexed, compiled_shapes = [(512, 512), (50000, 512)], shapes + [(512, 512), (50000, 512)]
    cases = []
    for shape in shapes:
        for provider in bench.PGD_PROVIDERS:
            if provider != "compiled" or shape in compiled_shapes:
                cases.append(UpdateCase("pgd_update_", provider, shape))
    for shape in indexed:
        for provider in ("fused", "eager", "compiled"):
            if provider != "compiled" or shape in compiled_shapes:
                cases.append(UpdateCase("pgd_update_indexed_", provider, shape))
    return cases


def step_cases(grid: str, device: torch.device) -> list[StepCase]:
    # ResNet-18 forward+backward at batch 512 takes tens of seconds on 2 CPU cores: batch 64 there.
    batch = 4 if grid == "quick" else (512 if device.type == "cuda" else 64)
    return [StepCase("fused_engine", batch), StepCase("eager_authors", batch)]


def ceiling_sizes(grid: str, device: torch.device) -> dict:
    """Copy elements (float32) and square matrix size for the machine's two ceilings."""
    if grid == "quick":
        return {"copy": 1 << 20, "matmul": 256}
    if device.type == "cuda":
        return {"copy": 1 << 28, "matmul": 8192}
    return {"copy": 1 << 26, "matmul": 1024}


# --------------------------------------------------------------------------- end to end
def generation_step_runner(provider: str, batch: int, device: torch.device) -> bench.Runner:
    """One poison-generation step on a batch: surrogate forward+backward to the input, update.

    fused_engine: miue_ext.generate.steps.perturb_samplewise with K=1, as the engine runs it
      (channels_last, bf16 autocast on CUDA, fused mi_ue_loss, fused indexed update).
    eager_authors: float32 NCHW, reference.mi_ue_loss_authors, eager update of delta[index].
    Both take the gradient with respect to the input only (surrogate parameters frozen).
    """
    import miue_ext.reference as ref
    from miue_ext.models import FeatureSurrogate, ResNet18

    torch.manual_seed(0)
    surrogate = FeatureSurrogate(ResNet18(num_classes=10)).to(device).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 32, 32, 3), dtype=torch.uint8, generator=generator).to(device)
    labels = torch.randint(0, 10, (batch,), generator=generator).to(device)
    order = torch.arange(batch, device=device)
    if provider == "fused_engine":
        from miue_ext.generate import steps
        from miue_ext.generate.objectives import make_objective

        surrogate = surrogate.to(memory_format=torch.channels_last)
        objective = make_objective("mi", bench.TEMPERATURE, bench.ZETA)
        delta = torch.zeros(batch, 32, 32, 3, device=device)

        def engine_step():
            steps.perturb_samplewise(
                surrogate=surrogate,
                objective=objective,
                images=images,
                labels=labels,
                delta=delta,
                order=order,
                batch_size=batch,
                steps=1,
                alpha=bench.ALPHA,
                eps=bench.EPS,
                amp=lambda: steps.autocast_context(device, True),
                channels_last=True,
                on_batch=lambda *args: None,
            )

        return bench.Runner(engine_step)

    delta = torch.zeros(batch, 3, 32, 32, device=device)

    def authors_step():
        x = images.index_select(0, order).permute(0, 3, 1, 2).float().div(255).contiguous()
        rows = delta[order]
        inputs = (x + rows).requires_grad_(True)
        features, _ = surrogate(inputs)
        loss = ref.mi_ue_loss_authors(features, labels, bench.TEMPERATURE, bench.ZETA)
        (grad,) = torch.autograd.grad(loss, inputs)
        delta[order] = ref.pgd_update(rows, x, grad, bench.ALPHA, bench.EPS)

    return bench.Runner(authors_step)


def priority(test_name: str, case) -> int:
    """Run order: the ceilings, then what the issue's targets need, then the rest."""
    if test_name in ("test_copy_bandwidth", "test_matmul_rate"):
        return 0
    if (
        isinstance(case, LossCase)
        and case.op == "mi_ue_loss"
        and (case.batch, case.dim, case.classes) == TARGET_SIZE
        and case.features == "randn"
    ):
        return 1
    if isinstance(case, StepCase) or (isinstance(case, UpdateCase) and case.elements == 1 << 26):
        return 2
    if isinstance(case, LossCase) and (case.batch, case.dim, case.classes) == MEMORY_SIZE and case.provider == "fused":
        return 3
    return 4
