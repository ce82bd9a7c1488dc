#!/usr/bin/env python3
"""kiln against HashiCorp Packer 1.6.6 (Debian's `packer`) on the same template file
(bench/tiny.json, Packer's legacy JSON, given unchanged to both), alternating, N runs each.

Reports medians, the per-pair ratio kiln/Packer, each tool's phase split (boot to SSH,
provisioning, shutdown, disk export, everything else — from the time each tool's progress lines
arrive), a floor (bench/floor.sh: qemu + ssh + qemu-img by hand, the same steps with no tool),
kiln's overhead over that floor, kiln's cache-hit time, kiln's peak RSS without qemu (VmHWM of the
kiln process), and a 4-build template with -parallel-builds=1 and =2.

    bench/vs_packer.py [RUNS]      (from the repository root; installs packer if missing)
"""
import json, os, re, shutil, statistics, subprocess, sys, tempfile, threading, time

runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(root)
subprocess.run(["scripts/setup.sh"], check=True)
if not shutil.which("packer"):
    subprocess.run(["apt-get", "install", "-y", "-qq", "packer"], check=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
subprocess.run(["cargo", "build", "--release", "--locked", "-q"], check=True)
base = subprocess.run(["scripts/ensure-base.sh"], check=True, capture_output=True, text=True).stdout.strip()
base = os.path.realpath(base)
kiln = os.path.join(root, "target/release/kiln")
work = tempfile.mkdtemp(prefix="kiln-vs-packer-")
upload = os.path.join(work, "upload.txt")
open(upload, "w").write("uploaded by the benchmark\n")
store = os.path.join(work, "store")
env = dict(os.environ, KILN_STORE=store, PACKER_CACHE_DIR=os.path.join(work, "packer_cache"), CHECKPOINT_DISABLE="1")
tpl = os.path.join(root, "bench/tiny.json")

def timed_lines(cmd, out_dir, watch_pid=False):
    """Runs cmd, timestamping each output line on arrival; returns (wall, [(t, line)], peak_rss_kb)."""
    shutil.rmtree(out_dir, ignore_errors=True)
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=work)
    peak = [0]
    def watch():
        while p.poll() is None:
            try:
                for l in open(f"/proc/{p.pid}/status"):
                    if l.startswith("VmHWM:"):
                        peak[0] = max(peak[0], int(l.split()[1]))
            except OSError:
                pass
            time.sleep(0.02)
    w = threading.Thread(target=watch)
    if watch_pid:
        w.start()
    lines = []
    for line in p.stdout:
        lines.append((time.monotonic() - t0, line.rstrip("\n")))
    p.wait()
    wall = time.monotonic() - t0
    if watch_pid:
        w.join()
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n" + "\n".join(l for _, l in lines))
    return wall, lines, peak[0]

def first(lines, pattern, default=None):
    for t, l in lines:
        if re.search(pattern, l):
            return t
    if default is None:
        sys.exit(f"no line matches {pattern!r}:\n" + "\n".join(l for _, l in lines))
    return default

def phases(lines, wall, marks):
    """marks: regexes for boot start, SSH connected, provisioning start, shutdown start, export start, export end."""
    b0, ssh, p0, s0, e0, e1 = (first(lines, m) for m in marks)
    split = {"boot to SSH": ssh - b0, "provisioning": s0 - p0, "shutdown": e0 - s0, "disk export": e1 - e0}
    split["everything else"] = wall - sum(split.values())
    return split

PACKER_MARKS = [r"Starting VM", r"Connected to SSH!", r"Provisioning with", r"Gracefully halting", r"Converting hard drive", r"Running post-processor"]
KILN_MARKS = [r"started qemu", r"connected to the guest over SSH", r"provisioning with", r"shutting down the guest", r"phase: export", r"exported image.qcow2"]

def packer_run(out):
    return timed_lines(["packer", "build", "-force", "-var", f"base={base}", "-var", f"out={out}", "-var", f"upload={upload}", tpl], out)

def kiln_run(out, extra=()):
    return timed_lines([kiln, "build", "-force", "-verbose", *extra, "-var", f"base={base}", "-var", f"out={out}", "-var", f"upload={upload}", tpl], out, watch_pid=True)

def floor_run():
    t0 = time.monotonic()
    subprocess.run([os.path.join(root, "bench/floor.sh"), base, upload, os.path.join(work, "floor")], check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0

res = {"packer": [], "kiln": [], "floor": [], "ratio": [], "kiln_rss": []}
split = {"packer": [], "kiln": []}
for i in range(runs):
    pw, pl, _ = packer_run(os.path.join(work, "out-packer"))
    kw, kl, rss = kiln_run(os.path.join(work, "out-kiln"))
    fw = floor_run()
    res["packer"].append(pw); res["kiln"].append(kw); res["floor"].append(fw); res["ratio"].append(kw / pw); res["kiln_rss"].append(rss)
    split["packer"].append(phases(pl, pw, PACKER_MARKS))
    split["kiln"].append(phases(kl, kw, KILN_MARKS))
    print(f"pair {i + 1}: packer {pw:.2f}s, kiln {kw:.2f}s (ratio {kw / pw:.2f}), floor {fw:.2f}s, kiln peak RSS {rss / 1024:.1f} MiB", flush=True)

# Cache hit: the same inputs again, without -force.
hits = []
for _ in range(runs):
    t0 = time.monotonic()
    subprocess.run([kiln, "build", "-var", f"base={base}", "-var", f"out={os.path.join(work, 'out-kiln')}", "-var", f"upload={upload}", tpl], check=True, env=env, cwd=work, stdout=subprocess.DEVNULL)
    hits.append(time.monotonic() - t0)

# Four builds, one and two at a time.
four = json.load(open(tpl))
b = four["builders"][0]
four["builders"] = [dict(b, name=f"t{i}", output_directory=f"{{{{user `out`}}}}-{i}") for i in range(1, 5)]
four["post-processors"] = []
tpl4 = os.path.join(work, "four.json")
json.dump(four, open(tpl4, "w"), indent=2)
par = {}
for n in (1, 2):
    t0 = time.monotonic()
    subprocess.run([kiln, "build", "-force", f"-parallel-builds={n}", "-var", f"base={base}", "-var", f"out={os.path.join(work, 'p')}", "-var", f"upload={upload}", tpl4], check=True, env=env, cwd=work, stdout=subprocess.DEVNULL)
    par[n] = time.monotonic() - t0

med = statistics.median
print(f"\nmedians of {runs} alternating runs")
print(f"  packer 1.6.6 {med(res['packer']):6.2f} s")
print(f"  kiln         {med(res['kiln']):6.2f} s   kiln/packer per pair: median {med(res['ratio']):.2f} (min {min(res['ratio']):.2f}, max {max(res['ratio']):.2f})")
print(f"  floor        {med(res['floor']):6.2f} s   kiln overhead over the floor: {med(res['kiln']) - med(res['floor']):+.2f} s")
print(f"  kiln cache hit {med(hits):.3f} s; kiln peak RSS (VmHWM, qemu excluded) {max(res['kiln_rss']) / 1024:.1f} MiB")
print(f"  4 builds: -parallel-builds=1 {par[1]:.1f} s, -parallel-builds=2 {par[2]:.1f} s")
print("\nphase split (medians, seconds)")
keys = ["boot to SSH", "provisioning", "shutdown", "disk export", "everything else"]
print("  %-16s %8s %8s" % ("phase", "packer", "kiln"))
for k in keys:
    print("  %-16s %8.2f %8.2f" % (k, med(s[k] for s in split["packer"]), med(s[k] for s in split["kiln"])))
shutil.rmtree(work, ignore_errors=True)
