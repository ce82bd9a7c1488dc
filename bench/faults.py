#!/usr/bin/env python3
"""The fault matrix (issue 12): kill kiln in each phase of a real build with SIGINT, SIGTERM and
SIGKILL, then check what a user relies on; and run concurrent builds of one template into one
store against a gc loop. Prints a markdown table; --write puts it into docs/reliability.md.

    bench/faults.py            the full matrix (7 phases x 3 signals + concurrency), ~5 minutes
    bench/faults.py --quick    3 phases x 2 signals + concurrency of 2 (what CI runs)
    bench/faults.py --phase=shell-local --signal=SIGKILL --repeat=5    one cell, five times

After every kill it checks: kiln exited (130/143 for SIGINT/SIGTERM), no qemu of this run and no
child of a host script is left running, nothing was published (except in post-process, which
runs after publish), `kiln verify` passes, and the next `kiln build` works and sweeps every
scratch directory the killed run left (store temp dirs, host-script dirs).
Needs: scripts/setup.sh has run; KILN_BIN (default target/debug/kiln, built if missing).
"""
import os, re, shutil, signal, subprocess, sys, tempfile, time

quick = "--quick" in sys.argv
write = "--write" in sys.argv
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
kiln = os.environ.get("KILN_BIN") or os.path.join(root, "target/debug/kiln")
if not os.path.exists(kiln):
    subprocess.run(["cargo", "build", "--locked", "-q", "--bin", "kiln"], cwd=root, check=True)
base = subprocess.run([os.path.join(root, "scripts/ensure-base.sh")], check=True,
                      capture_output=True, text=True).stdout.strip()
work = tempfile.mkdtemp(prefix="kiln-faults-")
tmpdir = os.path.join(work, "tmp")
os.makedirs(tmpdir)


def source(name, out, extra=""):
    return f'''source "qemu" "{name}" {{
  iso_url              = "{base}/base.qcow2"
  iso_checksum         = "none"
  disk_image           = true
  accelerator          = "tcg"
  memory               = 256
  kernel               = "{base}/vmlinux"
  initrd               = "{base}/initrd.img"
  kernel_args          = "root=/dev/vda rw console=ttyS0 quiet"
  output_directory     = "{out}"
  vm_name              = "disk.qcow2"
  ssh_username         = "root"
  ssh_private_key_file = "{base}/id_ed25519"
  ssh_timeout          = "2m"
  shutdown_command     = "{extra or 'sync; poweroff'}"
  shutdown_timeout     = "1m"
}}
'''


def template(name, phase, with_post=True):
    """A template with a long step in `phase` and a marker telling when kiln is inside it."""
    mark = os.path.join(work, f"{name}.mark")
    # (each run its own cache key: the phase and name are written into the image)
    shutdown = "touch /root/x; sync; sleep 30; poweroff" if phase == "shutdown" else ""
    steps = f'  provisioner "shell" {{\n    inline = ["echo {phase} {name} > /root/phase"]\n  }}\n'
    if phase == "provision":
        steps += '  provisioner "shell" {\n    inline = ["sleep 60"]\n  }\n'
    if phase == "shell-local":
        steps += f'  provisioner "shell-local" {{\n    inline = ["sleep 60 & echo $! > {mark}.child; wait"]\n  }}\n'
    if phase == "post-process" and with_post:
        steps += f'  post-processor "shell-local" {{\n    inline = ["sleep 60 & echo $! > {mark}.child; wait"]\n  }}\n'
    text = source(name, os.path.join(work, f"out-{name}"), shutdown) + \
        f'build {{\n  sources = ["source.qemu.{name}"]\n{steps}}}\n'
    path = os.path.join(work, f"{name}.pkr.hcl")
    with open(path, "w") as f:
        f.write(text)
    return path


# phase -> (log line that says kiln is in it, extra environment)
PHASES = {
    "boot": ("waiting for SSH on", {}),
    "provision": ("provisioner 2/2", {}),
    "shell-local": (None, {}),  # the marker file of the host script
    "shutdown": ("shutting down the guest", {}),
    "store": ("exported disk.qcow2", {"KILN_FAILPOINT": "store-before-rename", "KILN_FAILPOINT_SECS": "5"}),
    "post-process": (None, {}),
    "publish-cache-hit": ("up to date", {}),
}
SIGNALS = [("SIGINT", signal.SIGINT), ("SIGTERM", signal.SIGTERM), ("SIGKILL", signal.SIGKILL)]
if quick:
    PHASES = {k: PHASES[k] for k in ["provision", "shell-local", "store"]}
    SIGNALS = [SIGNALS[1], SIGNALS[2]]
for arg in sys.argv[1:]:
    if arg.startswith("--phase="):
        PHASES = {k: v for k, v in PHASES.items() if k in arg[8:].split(",")}
    if arg.startswith("--signal="):
        SIGNALS = [x for x in SIGNALS if x[0] in arg[9:].split(",")]
    if arg.startswith("--repeat="):
        PHASES = {f"{k}": v for k, v in PHASES.items()}
        SIGNALS = SIGNALS * int(arg[9:])

store = os.path.join(work, "store")
env = dict(os.environ, KILN_STORE=store, KILN_WORK_DIR=os.path.join(work, "scratch"), TMPDIR=tmpdir)
for k in ["KILN_FAILPOINT", "KILN_FAILPOINT_SECS", "KILN_CACHE_SECRET"]:
    env.pop(k, None)


def running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def qemu_of_this_run():
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if "qemu-system" in cmd and work in cmd and running(p):
                out.append(p)
    return out


def kiln_run(args, extra_env=None):
    return subprocess.run([kiln, *args], env=dict(env, **(extra_env or {})), cwd=work,
                          capture_output=True, text=True)


def wait_until(cond, secs):
    end = time.monotonic() + secs
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


rows, failures = [], []
n = 0
for phase, (line, extra_env) in PHASES.items():
    for sig_name, sig in SIGNALS:
        n += 1
        name = f"f{n}"
        t = template(name, phase)
        mark = os.path.join(work, f"{name}.mark")
        out_dir = os.path.join(work, f"out-{name}")
        if phase in ("publish-cache-hit", "post-process"):
            # Reach these through a built image: build once, then the run under test is a hit.
            # (post-processors are not in the cache key: the setup build runs without them)
            r = kiln_run(["build", template(name, phase, with_post=False)])
            if r.returncode != 0:
                sys.exit(r.stdout + r.stderr)
            shutil.rmtree(out_dir)
            t = template(name, phase)
        log_path = os.path.join(work, f"{name}.log")
        log = open(log_path, "w")
        p = subprocess.Popen([kiln, "build", t], env=dict(env, **extra_env), cwd=work,
                             stdout=log, stderr=subprocess.STDOUT)
        if line:
            reached = wait_until(lambda: line in open(log_path).read(), 120)
        else:
            reached = wait_until(lambda: os.path.exists(mark + ".child") and
                                 open(mark + ".child").read().endswith("\n"), 120)
        problems = []
        if not reached:
            problems.append("phase never reached")
        child = open(mark + ".child").read().strip() if os.path.exists(mark + ".child") else None
        if p.poll() is not None:
            # The phase was shorter than the poll: nothing to kill; not counted.
            log.close()
            rows.append((phase, sig_name, p.returncode, "-", "finished before the signal (not counted)"))
            print(f"{phase:<18} {sig_name:<8} finished before the signal", flush=True)
            shutil.rmtree(out_dir, ignore_errors=True)
            continue
        t0 = time.monotonic()
        p.send_signal(sig)
        try:
            code = p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            problems.append("kiln did not exit within 30 s")
            p.kill()
            code = p.wait()
        exit_s = time.monotonic() - t0
        log.close()
        want = {signal.SIGINT: 130, signal.SIGTERM: 143}.get(sig)
        if want is not None and code != want:
            problems.append(f"exit {code}, want {want}")
        if not wait_until(lambda: not qemu_of_this_run(), 10):
            problems.append(f"qemu left running: {qemu_of_this_run()}")
        if child and not wait_until(lambda: not running(child), 10):
            problems.append("a host script's child outlived kiln")
        if "build finished in" in open(log_path).read():
            # The kill landed after the build completed (a short phase): not counted.
            rows.append((phase, sig_name, code, f"{exit_s:.1f}", "finished before the signal (not counted)"))
            print(f"{phase:<18} {sig_name:<8} finished before the signal", flush=True)
            shutil.rmtree(out_dir, ignore_errors=True)
            continue
        published = os.path.exists(out_dir)
        if published and phase != "post-process":
            problems.append("output published by a killed run")
        v = kiln_run(["verify"])
        if v.returncode != 0 and "no kiln store" not in v.stdout + v.stderr:
            problems.append("kiln verify failed: " + (v.stdout + v.stderr).strip()[-200:])
        # The next build works and sweeps what the killed one left.
        shutil.rmtree(out_dir, ignore_errors=True)
        # (the same build without its long step: what matters is that it runs and sweeps)
        nxt = kiln_run(["build", template(name, "none")])
        if nxt.returncode != 0:
            problems.append("the next build failed: " + (nxt.stdout + nxt.stderr).strip()[-300:])
        left_tmp = os.listdir(os.path.join(store, "tmp")) if os.path.isdir(os.path.join(store, "tmp")) else []
        if left_tmp:
            problems.append(f"store temp dirs left: {left_tmp}")
        if os.listdir(tmpdir):
            problems.append(f"host-script scratch left: {os.listdir(tmpdir)}")
        status = "held" if not problems else "FAILED: " + "; ".join(problems)
        rows.append((phase, sig_name, code, f"{exit_s:.1f}", status))
        print(f"{phase:<18} {sig_name:<8} exit {code!s:<4} in {exit_s:4.1f}s  {status}", flush=True)
        if problems:
            failures.append((phase, sig_name, problems, open(log_path).read()[-1500:]))

# Concurrency: N builds of one name (one tag), different outputs, at once, against a gc loop.
N = 2 if quick else 3
paths = []
for i in range(N):
    text = source("same", os.path.join(work, f"out-same-{i}")) + \
        f'build {{\n  sources = ["source.qemu.same"]\n  provisioner "shell" {{\n    inline = ["echo {i} > /root/i"]\n  }}\n}}\n'
    path = os.path.join(work, f"same-{i}.pkr.hcl")
    open(path, "w").write(text)
    paths.append(path)
procs = [subprocess.Popen([kiln, "build", pth], env=env, cwd=work, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) for pth in paths]
gcs = 0
while any(pr.poll() is None for pr in procs):
    kiln_run(["gc"])
    gcs += 1
    time.sleep(0.2)
outs = [pr.communicate()[0] for pr in procs]
ids = []
for o, pr in zip(outs, procs):
    m = re.search(r"stored image (sha256:[0-9a-f]+)", o)
    if pr.returncode != 0 or not m:
        failures.append(("concurrency", "-", ["a build failed"], o[-1500:]))
    else:
        ids.append(m.group(1))
kiln_run(["gc"])
listing = kiln_run(["images"]).stdout
survived = sum(1 for i in ids if i[:19] in listing and kiln_run(["verify", i]).returncode == 0)
conc = f"{survived} of {N} concurrent commits survived {gcs} gc runs"
print(conc)
if survived != N:
    failures.append(("concurrency", "-", [conc], listing))

held = sum(1 for r in rows if r[4] == "held")
counted = sum(1 for r in rows if "not counted" not in r[4])
table = ["| phase | signal | exit | exit after | result |", "|---|---|---|---|---|"]
table += [f"| {a} | {b} | {c} | {d} s | {e} |" for a, b, c, d, e in rows]
summary = f"{held} of {counted} kill points held; {conc}."
print("\n" + "\n".join(table) + "\n\n" + summary)
if write:
    doc = os.path.join(root, "docs/reliability.md")
    text = open(doc).read() if os.path.exists(doc) else ""
    start, end = "<!-- faults:begin -->", "<!-- faults:end -->"
    block = f"{start}\n{chr(10).join(table)}\n\n{summary}\n{end}"
    if start in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text += "\n" + block + "\n"
    open(doc, "w").write(text)
for phase, sig, problems, tail in failures:
    print(f"\n--- {phase} {sig}: {problems}\n{tail}", file=sys.stderr)
shutil.rmtree(work, ignore_errors=True)
sys.exit(1 if failures else 0)
