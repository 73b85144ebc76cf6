"""Mean, min and max clean test accuracy per variant and victim from out/sweep/*/report.json.

A report folder is NAME_sSEED_VICTIM; VICTIM may carry a suffix (plaincnn_e100: a victim
trained with non-default options), which makes it a column of its own.

python experiments/protection_table.py [SWEEP_DIR]
"""

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else "out/sweep")
rows = defaultdict(list)
for report in sorted(root.glob("*_s*_*/report.json")):
    match = re.fullmatch(r"(.+)_s(\d+)_([a-z0-9]+(?:_[a-z0-9]+)*)", report.parent.name)
    if not match:
        continue
    name, seed, victim = match.groups()
    data = json.loads(report.read_text())
    rows[(name, victim)].append((int(seed), 100 * data["final_test_acc"], 100 * data["peak_test_acc"]))

if not rows:
    sys.exit(f"no NAME_sSEED_VICTIM/report.json under {root} (experiments/protection_run.sh writes them)")

print("| variant | victim | seeds | final mean (range) | peak mean (range) | per seed final/peak |")
print("|---|---|---|---|---|---|")
for (name, victim), runs in sorted(rows.items()):
    finals = [r[1] for r in runs]
    peaks = [r[2] for r in runs]
    per_seed = ", ".join(f"s{s}: {f:.1f}/{p:.1f}" for s, f, p in sorted(runs))
    print(
        f"| {name} | {victim} | {len(runs)} | {statistics.mean(finals):.1f} ({min(finals):.1f}-{max(finals):.1f}) "
        f"| {statistics.mean(peaks):.1f} ({min(peaks):.1f}-{max(peaks):.1f}) | {per_seed} |"
    )
