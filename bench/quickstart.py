#!/usr/bin/env python3
"""Times kiln on templates/quickstart.pkr.hcl: N runs (default 5), medians of the wall time and of
each phase kiln reports (boot = qemu start to SSH connected, provision, shutdown = shutdown_command
to qemu exit, export = qemu-img convert + digest), and kiln's own overhead = wall time minus
boot, provision, shutdown and export.

    bench/quickstart.py [RUNS]        (run from the repository root; builds kiln --release first)
"""
import os, re, shutil, statistics, subprocess, sys, time

runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(root)
subprocess.run(["scripts/setup.sh"], check=True)
subprocess.run(["cargo", "build", "--release", "--locked", "-q"], check=True)
subprocess.run(["scripts/ensure-base.sh"], check=True, stdout=subprocess.DEVNULL)
kiln = os.path.join(root, "target/release/kiln")
rows = []
for i in range(runs):
    shutil.rmtree("output-quickstart", ignore_errors=True)
    t0 = time.monotonic()
    p = subprocess.run([kiln, "build", "-force", "templates/quickstart.pkr.hcl"], capture_output=True, text=True)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit(f"run {i} failed:\n{p.stdout}\n{p.stderr}")
    m = re.search(r"build finished in [\d.]+s \((.*)\)", p.stdout)
    phases = {k: float(v) for k, v in re.findall(r"([\w-]+) ([\d.]+)s", m.group(1))}
    phases["wall"] = wall
    phases["overhead"] = wall - sum(phases.get(k, 0) for k in ("boot", "provision", "shutdown", "export"))
    rows.append(phases)
    print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in phases.items()), flush=True)
keys = ["wall", "boot", "provision", "shutdown", "export", "overhead"]
print("\nmedian of %d runs:" % runs)
for k in keys:
    print(f"  {k:<10} {statistics.median(r.get(k, 0) for r in rows):6.2f} s")
shutil.rmtree("output-quickstart", ignore_errors=True)
