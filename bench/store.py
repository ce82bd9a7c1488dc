#!/usr/bin/env python3
"""The store's costs, side by side in one run (issue 4):
- cache hit: `kiln build` of the quickstart when the store already has its image, with the output
  directory present (nothing to copy) and removed (the disk is copied out of the store);
- seal: kiln's export + store phases (qemu-img convert of the overlay, sha256, fsync, rename,
  manifest) against a bare `qemu-img convert` of the same disk, and the whole seal including
  the guest's shutdown.

    bench/store.py [RUNS]     (from the repository root)
"""
import os, re, shutil, statistics, subprocess, sys, tempfile, time

runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(root)
subprocess.run(["scripts/setup.sh"], check=True)
subprocess.run(["cargo", "build", "--release", "--locked", "-q"], check=True)
subprocess.run(["scripts/ensure-base.sh"], check=True, stdout=subprocess.DEVNULL)
kiln = os.path.join(root, "target/release/kiln")
store = tempfile.mkdtemp(prefix="kiln-bench-store-")
env = dict(os.environ, KILN_STORE=store)
tpl = "templates/quickstart.pkr.hcl"

def build(*extra):
    t0 = time.monotonic()
    p = subprocess.run([kiln, "build", *extra, tpl], capture_output=True, text=True, env=env)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit(p.stdout + p.stderr)
    m = re.search(r"build finished in [\d.]+s \((.*)\)", p.stdout)
    return wall, {k: float(v) for k, v in re.findall(r"([\w-]+) ([\d.]+)s", m.group(1))}

seal, export_store, bare, hit_present, hit_copy = [], [], [], [], []
for i in range(runs):
    shutil.rmtree("output-quickstart", ignore_errors=True)
    wall, ph = build("-force")
    seal.append(ph["shutdown"] + ph["export"] + ph["store"])
    export_store.append(ph["export"] + ph["store"])
    # A bare convert of the same disk, right after.
    out = os.path.join(store, "bare.qcow2")
    t0 = time.monotonic()
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", "output-quickstart/quickstart.qcow2", out], check=True)
    bare.append(time.monotonic() - t0)
    os.remove(out)
    hit_present.append(build()[0])
    shutil.rmtree("output-quickstart", ignore_errors=True)
    hit_copy.append(build()[0])
    print(f"run {i + 1}: seal {seal[-1]:.3f}s (export+store {export_store[-1]:.3f}s), bare convert {bare[-1]:.3f}s, cache hit {hit_present[-1]:.3f}s / with copy-out {hit_copy[-1]:.3f}s", flush=True)
med = statistics.median
print(f"\nmedian of {runs}: cache hit {med(hit_present):.3f}s, cache hit + copy to output_directory {med(hit_copy):.3f}s")
print(f"seal (shutdown+export+store) {med(seal):.3f}s; export+store {med(export_store):.3f}s vs bare qemu-img convert {med(bare):.3f}s = {med(export_store) / med(bare):.2f}x")
shutil.rmtree(store, ignore_errors=True)
shutil.rmtree("output-quickstart", ignore_errors=True)
