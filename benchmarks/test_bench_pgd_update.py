"""pgd_update_ (whole tensors) and pgd_update_indexed_ (rows of a pool, as the engine calls it):
fused, eager, torch.compile, and for pgd_update_ an equal-bytes copy (cases.update_cases)."""

from miue_ext import bench


def test_update(update_case, measure, bench_settings):
    case, device = update_case, bench_settings.device
    if case.op == "pgd_update_":
        runner = bench.pgd_runner(case.provider, case.shape, device)
    else:
        pool_rows, batch = case.shape
        runner = bench.pgd_indexed_runner(case.provider, pool_rows, batch, device)
    measure(
        runner,
        case.group,
        {
            "kind": "update",
            "op": case.op,
            "provider": case.provider,
            "size": case.size_label,
            "elements": case.elements,
            "bytes_moved": bench.pgd_bytes(case.elements),
        },
    )
