"""The fused ops' benchmark providers (runners.py) and their measurement (measure.py), shared
by `miue bench` (miue_ext.commands.bench) and the pytest-benchmark suite in benchmarks/, so both
measure exactly the same code; this package needs no source tree.
"""

from miue_ext.bench.measure import (  # noqa: F401  (the suite uses these through miue_ext.bench)
    cuda_synchronized_clock,
    estimate_seconds,
    measure,
    peak_extra_bytes,
    plan_rounds,
    seconds_per_call,
    synchronize,
)
from miue_ext.bench.runners import (  # noqa: F401
    ALPHA,
    COLLAPSED_SPREAD,
    EPS,
    FEATURE_KINDS,
    IMAGE_SHAPE,
    LOSS_OPS,
    LOSS_PROVIDERS,
    MODES,
    PGD_PROVIDERS,
    PRODUCTS,
    TEMPERATURE,
    ZETA,
    Runner,
    authors_fits,
    compiled,
    dist_loss_authors,
    dist_loss_eager,
    floor_runner,
    intra_class_cosine_authors,
    intra_class_cosine_eager,
    loss_flops,
    loss_function,
    loss_inputs,
    loss_min_bytes,
    loss_runner,
    pgd_bytes,
    pgd_eager_,
    pgd_indexed_eager_,
    pgd_indexed_runner,
    pgd_inputs,
    pgd_runner,
)
