"""mi_ue_loss (forward, backward, forward+backward), sim_loss, dist_loss and intra_class_cosine:
every provider of miue_ext.bench at the sizes of the chosen grid (cases.loss_cases)."""

from miue_ext import bench


def test_loss(loss_case, measure, bench_settings):
    case = loss_case
    features, labels = bench.loss_inputs(case.batch, case.dim, case.classes, bench_settings.device, kind=case.features)
    runner = bench.loss_runner(case.op, case.mode, case.provider, features, labels)
    measure(
        runner,
        case.group,
        {
            "kind": "loss",
            "op": case.op,
            "mode": case.mode,
            "provider": case.provider,
            "B": case.batch,
            "D": case.dim,
            "C": case.classes,
            "features": case.features,
            "features_bytes": features.numel() * features.element_size(),
            "flops_floor": bench.loss_flops(case.batch, case.dim, case.mode),
            "bytes_floor": bench.loss_min_bytes(case.batch, case.dim, case.mode),
        },
    )
