#!/usr/bin/env python3
"""Compares two kiln binaries on templates/quickstart.pkr.hcl: N `-force` builds each (default 4),
alternating which goes first, and prints the median wall time, the median boot phase and the
ratio new ÷ old. Run from the repository root after scripts/ensure-base.sh.

    bench/ab_quickstart.py OLD_KILN NEW_KILN [RUNS]
"""
import re, shutil, statistics, subprocess, sys, time

old, new = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 4
bins = {"old": old, "new": new}
wall = {"old": [], "new": []}
boot = {"old": [], "new": []}
for i in range(runs):
    for k in (["old", "new"] if i % 2 == 0 else ["new", "old"]):
        shutil.rmtree("output-quickstart", ignore_errors=True)
        t = time.monotonic()
        p = subprocess.run([bins[k], "build", "-force", "templates/quickstart.pkr.hcl"], capture_output=True, text=True)
        w = time.monotonic() - t
        if p.returncode != 0:
            sys.exit(f"{k} run {i} failed:\n{p.stdout}\n{p.stderr}")
        m = re.search(r"boot ([\d.]+)s", p.stdout)
        wall[k].append(w)
        boot[k].append(float(m.group(1)) if m else 0.0)
        print(f"{k} {w:.2f}s", flush=True)
shutil.rmtree("output-quickstart", ignore_errors=True)
for k in ("old", "new"):
    print(f"{k}: median wall {statistics.median(wall[k]):.2f}s, boot {statistics.median(boot[k]):.2f}s")
print(f"new / old: {statistics.median(wall['new']) / statistics.median(wall['old']):.3f}")
