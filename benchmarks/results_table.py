"""Turn a pytest-benchmark JSON of this suite into a markdown report and a PNG plot.

    python benchmarks/results_table.py RESULTS.json [--markdown out.md] [--png out.png]

Ratios: "x eager" is eager's median over this provider's (higher = faster than eager), likewise
"x authors" and "x compiled"; "/ floor" is this provider's median over the floor provider's
(the unavoidable matrix products, or an equal-bytes copy); "/ model" is the median over
max(flops / measured matmul rate, bytes / measured copy bandwidth).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plot  # noqa: E402  (benchmarks/plot.py)

PROVIDER_ORDER = ("fused", "eager", "compiled", "authors", "floor", "fused_engine", "eager_authors", "torch")
TARGET_SIZE, MEMORY_SIZE = (512, 512, 10), (8192, 2048, 10)


def load(path) -> tuple[dict, list[dict]]:
    data = json.loads(Path(path).read_text())
    records = []
    for entry in data.get("benchmarks", []):
        record = dict(entry.get("extra_info", {}))
        if "kind" not in record:
            continue  # not one of this suite's benchmarks
        record["median_s"] = entry["stats"]["median"]
        record["rounds"] = entry["stats"]["rounds"]
        records.append(record)
    meta = dict(data.get("miue", {}))
    meta["datetime"] = data.get("datetime", "")
    return meta, records


def _order(provider):
    return PROVIDER_ORDER.index(provider) if provider in PROVIDER_ORDER else len(PROVIDER_ORDER)


def _ms(seconds):
    return f"{1e3 * seconds:.3f}" if seconds < 1 else f"{1e3 * seconds:,.0f}"


def _ratio(value):
    return "-" if value is None else (f"{value:.2f}" if value < 100 else f"{value:,.0f}")


def ceilings(records) -> dict:
    """Copy bandwidth (bytes/s, read + written) and matmul rate (flop/s), if measured."""
    out = {}
    for r in records:
        if r["kind"] == "ceiling" and r["op"] == "copy":
            out["bandwidth"] = r["bytes_moved"] / r["median_s"]
        if r["kind"] == "ceiling" and r["op"] == "matmul":
            out["flop_rate"] = r["flops"] / r["median_s"]
    return out


def _groups(records, kind, key):
    groups = defaultdict(dict)
    for r in records:
        if r["kind"] == kind:
            groups[key(r)][r["provider"]] = r
    return groups


def _features(r):
    return r.get("features", "randn")  # records from before the collapsed case have no field


def _loss_key(r):
    op = r["op"] if _features(r) == "randn" else f"{r['op']} ({_features(r)})"
    return (op, r["mode"], r["B"], r["D"], r["C"])


def loss_table(records, limits) -> list[str]:
    groups = _groups(records, "loss", _loss_key)
    if not groups:
        return []
    lines = [
        "| op | mode | B | D | C | provider | median ms | x eager | x authors | x compiled | / floor "
        "| / model | peak extra MB | extra / features |",
        "|" + "---|" * 14,
    ]
    op_order = ("mi_ue_loss", "sim_loss", "dist_loss", "intra_class_cosine")
    mode_order = ("fwd", "bwd", "fwd+bwd")
    for key in sorted(
        groups,
        key=lambda k: (
            op_order.index(k[0]) if k[0] in op_order else 9,
            mode_order.index(k[1]) if k[1] in mode_order else 9,
            *k[2:],
        ),
    ):
        row = groups[key]
        for provider in sorted(row, key=_order):
            r, t = row[provider], row[provider]["median_s"]
            speedup = {b: row[b]["median_s"] / t if b in row else None for b in ("eager", "authors", "compiled")}
            over_floor = t / row["floor"]["median_s"] if "floor" in row else None
            lines.append(
                "| "
                + " | ".join(
                    [
                        *map(str, key),
                        provider,
                        _ms(t),
                        _ratio(speedup["eager"]),
                        _ratio(speedup["authors"]),
                        _ratio(speedup["compiled"]),
                        _ratio(over_floor),
                        _ratio(_over_model(r, limits)),
                        f"{r['peak_extra_bytes'] / 2**20:,.1f}",
                        _ratio(r["peak_extra_bytes"] / r["features_bytes"]),
                    ]
                )
                + " |"
            )
    return lines


def _over_model(r, limits):
    if "flop_rate" not in limits or "bandwidth" not in limits or r["provider"] == "floor":
        return None
    model = max(r["flops_floor"] / limits["flop_rate"], r["bytes_floor"] / limits["bandwidth"])
    return r["median_s"] / model


def update_table(records, limits) -> list[str]:
    groups = _groups(records, "update", lambda r: (r["op"], r["elements"], r["size"]))
    if not groups:
        return []
    lines = ["| op | size | elements | provider | median ms | GB/s | of copy bandwidth | x eager |", "|" + "---|" * 8]
    for key in sorted(groups):
        row = groups[key]
        for provider in sorted(row, key=_order):
            t = row[provider]["median_s"]
            rate = row[provider]["bytes_moved"] / t
            fraction = f"{rate / limits['bandwidth']:.0%}" if "bandwidth" in limits else "-"
            eager = _ratio(row["eager"]["median_s"] / t) if "eager" in row else "-"
            lines.append(
                f"| {key[0]} | {key[2]} | {key[1]:,} | {provider} | {_ms(t)} | {rate / 1e9:,.1f} "
                f"| {fraction} | {eager} |"
            )
    return lines


def step_table(records) -> list[str]:
    groups = _groups(records, "generation_step", lambda r: r["batch"])
    if not groups:
        return []
    lines = ["| batch | provider | median s | images*steps/s | x eager_authors |", "|---|---|---|---|---|"]
    for batch in sorted(groups):
        row = groups[batch]
        for provider in sorted(row, key=_order):
            t = row[provider]["median_s"]
            base = row.get("eager_authors")
            lines.append(
                f"| {batch} | {provider} | {t:.3f} | {batch / t:,.1f} | "
                f"{_ratio(base['median_s'] / t) if base else '-'} |"
            )
    return lines


def _find(records, **fields):
    for r in records:
        if all((_features(r) if k == "features" else r.get(k)) == v for k, v in fields.items()):
            return r
    return None


def targets(records, limits, device) -> list[str]:
    """The issue's targets with the measured value next to each (only those this run measured)."""
    rows = []
    batch, dim, classes = TARGET_SIZE
    at_target = {
        p: _find(
            records,
            kind="loss",
            op="mi_ue_loss",
            mode="fwd+bwd",
            provider=p,
            features="randn",
            B=batch,
            D=dim,
            C=classes,
        )
        for p in ("fused", "eager", "authors", "compiled", "floor")
    }
    fused = at_target["fused"]

    def add(name, need, value, passed):
        rows.append(f"| {name} | {need} | {value} | {'yes' if passed else 'NO'} |")

    if fused:
        t = fused["median_s"]
        where = f"{device.upper()} B=512 D=512 C=10 fwd+bwd"
        if at_target["floor"] and device == "cpu":
            ratio = t / at_target["floor"]["median_s"]
            add(
                f"{where}: fused / floor",
                "<= 1.5",
                f"{ratio:.2f} ({_ms(t)} ms vs {_ms(at_target['floor']['median_s'])} ms)",
                ratio <= 1.5,
            )
        for base, need in (
            ("eager", 2 if device == "cpu" else 5),
            ("compiled", None if device == "cpu" else 2),
            ("authors", 300 if device == "cpu" else None),
        ):
            if at_target[base] and need is not None:
                speedup = at_target[base]["median_s"] / t
                add(
                    f"{where}: {base} / fused",
                    f">= {need}",
                    f"{speedup:,.1f} ({_ms(at_target[base]['median_s'])} ms)",
                    speedup >= need,
                )
    collapsed = _find(
        records,
        kind="loss",
        op="mi_ue_loss",
        mode="fwd+bwd",
        provider="fused",
        features="collapsed",
        B=batch,
        D=dim,
        C=classes,
    )
    if fused and collapsed:
        ratio = collapsed["median_s"] / fused["median_s"]
        add(
            f"{device.upper()} B=512 D=512 C=10 fwd+bwd: fused collapsed / fused random features",
            "<= 1.2",
            f"{ratio:.2f} ({_ms(collapsed['median_s'])} ms vs {_ms(fused['median_s'])} ms)",
            ratio <= 1.2,
        )
    update = _find(records, kind="update", op="pgd_update_", provider="fused", elements=1 << 26)
    if update and "bandwidth" in limits:
        fraction = update["bytes_moved"] / update["median_s"] / limits["bandwidth"]
        add(
            "pgd_update_ at 2^26 elements: of copy bandwidth",
            ">= 85%",
            f"{fraction:.0%} ({update['bytes_moved'] / update['median_s'] / 1e9:,.0f} GB/s)",
            fraction >= 0.85,
        )
    engine = _find(records, kind="generation_step", provider="fused_engine")
    authors = _find(records, kind="generation_step", provider="eager_authors")
    if engine and authors and device == "cuda":
        speedup = authors["median_s"] / engine["median_s"]
        add(
            f"generation step (batch {engine['batch']}): fused engine / eager fp32 loop",
            ">= 3",
            f"{speedup:.2f}",
            speedup >= 3,
        )
    big = _find(
        records,
        kind="loss",
        op="mi_ue_loss",
        mode="fwd+bwd",
        provider="fused",
        features="randn",
        B=MEMORY_SIZE[0],
        D=MEMORY_SIZE[1],
        C=MEMORY_SIZE[2],
    )
    if big:
        ratio = big["peak_extra_bytes"] / big["features_bytes"]
        add(
            "B=8192 D=2048 fwd+bwd: fused extra memory / features' size",
            "< 4",
            f"{ratio:.2f} ({big['peak_extra_bytes'] / 2**20:,.0f} MB over {big['features_bytes'] / 2**20:,.0f} MB)",
            ratio < 4,
        )
    if not rows:
        return []
    return ["| target | required | measured | met |", "|---|---|---|---|", *rows]


def markdown(meta, records) -> str:
    limits = ceilings(records)
    device = meta.get("device", "cpu")
    name = meta.get("device_name", device)
    if device == "cpu":
        name = f"CPU {meta.get('cpu', '')} ({meta.get('cpu_count', '?')} CPUs)"
    out = [
        f"## Benchmarks: {name}",
        "",
        f"- date {meta.get('datetime', '?')}, commit {meta.get('commit', '?')}, torch {meta.get('torch', '?')}, "
        f"{meta.get('threads', '?')} CPU threads (OMP_WAIT_POLICY {meta.get('omp_wait_policy', '?')}), "
        f"grid `{meta.get('grid', '?')}`",
        f"- peak extra memory: {meta.get('memory_measured_with', '?')}",
    ]
    if "load_average_at_start" in meta:
        load = [round(x, 1) for x in meta["load_average_at_start"][:1] + meta["load_average_at_end"][:1]]
        out.append(
            f"- machine load (1-minute average) at start / end: {load[0]} / {load[1]} "
            f"on {meta.get('cpu_count', '?')} CPUs (load from other processes inflates CPU timings)"
        )
    if limits:
        out.append(
            f"- ceilings measured in this run: copy {limits.get('bandwidth', 0) / 1e9:,.1f} GB/s "
            f"(read + written), float32 matmul {limits.get('flop_rate', 0) / 1e9:,.1f} GFLOP/s"
        )
    out.append(
        "- x eager / x authors / x compiled: that provider's median over this one's (higher is faster); "
        "/ floor: this median over the floor provider's; / model: over max(flops / matmul rate, "
        "bytes / copy bandwidth)"
    )
    for title, table in (
        ("Targets", targets(records, limits, device)),
        ("Losses", loss_table(records, limits)),
        ("PGD update", update_table(records, limits)),
        ("Generation step (ResNet-18, 3x32x32)", step_table(records)),
    ):
        if table:
            out += ["", f"### {title}", "", *table]
    return "\n".join(out) + "\n"


def plot_time_vs_batch(records, path) -> bool:
    """mi_ue_loss fwd+bwd median time against B, one line per provider (log-log), at the
    (D, C) measured at the most batch sizes (D=512, C=10 in the default grids)."""
    candidates = [r for r in records if r["kind"] == "loss" and r["op"] == "mi_ue_loss" and r["mode"] == "fwd+bwd"]
    if not candidates:
        return False
    batches_at = defaultdict(set)
    for r in candidates:
        batches_at[(r["D"], r["C"])].add(r["B"])
    dim, classes = max(batches_at, key=lambda dc: (len(batches_at[dc]), dc == (512, 10)))
    series = defaultdict(list)
    for r in candidates:
        if (r["D"], r["C"]) == (dim, classes):
            series[r["provider"]].append((r["B"], 1e3 * r["median_s"]))
    series = {name: sorted(points) for name, points in sorted(series.items(), key=lambda kv: _order(kv[0]))}
    if not series:
        return False
    plot.log_log_lines(
        series, path, title=f"mi_ue_loss forward+backward, D={dim}, C={classes}", x_label="batch B", y_label="median ms"
    )
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "json",
        nargs="+",
        help="pytest-benchmark JSON (--benchmark-json) of this suite; several "
        "files of one machine are merged (metadata of the first)",
    )
    parser.add_argument("--markdown", help="write the markdown here (default: print it)")
    parser.add_argument("--png", help="write the time-vs-B plot here")
    args = parser.parse_args(argv)
    meta, records = load(args.json[0])
    for more in args.json[1:]:
        records += load(more)[1]
    if not records:
        print(f"results_table: no benchmarks of this suite in {', '.join(args.json)}", file=sys.stderr)
        return 1
    text = markdown(meta, records)
    if args.markdown:
        Path(args.markdown).write_text(text)
    else:
        print(text)
    if args.png and not plot_time_vs_batch(records, args.png):
        print("results_table: no mi_ue_loss fwd+bwd measurements to plot", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
