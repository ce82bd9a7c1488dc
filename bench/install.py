#!/usr/bin/env python3
"""Time split of an ISO install (issue 7): the tiny installer CD (tests/fixtures/mkinstaller.sh)
installed by kiln with a boot_command and an answer file over HTTP, N runs (default 3), medians of
the phases kiln reports: boot (to the end of boot_wait), boot-command (typing), install (until the
guest resets), reboot (reset to SSH), provision, shutdown, export.

    bench/install.py [RUNS]
"""
import os, re, shutil, statistics, subprocess, sys, tempfile

runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(root)
subprocess.run(["scripts/setup.sh"], check=True)
subprocess.run(["cargo", "build", "--release", "--locked", "-q"], check=True)
base = os.path.realpath(subprocess.run(["scripts/ensure-base.sh"], check=True, capture_output=True, text=True).stdout.strip())
inst = subprocess.run(["scripts/ensure-installer.sh"], check=True, capture_output=True, text=True).stdout.strip()
work = tempfile.mkdtemp(prefix="kiln-bench-install-")
os.makedirs(f"{work}/http")
shutil.copy(f"{inst}/payload.tar.gz", f"{work}/http/")
open(f"{work}/http/answer.txt", "w").write("payload=payload.tar.gz\nmarker=bench\n")
open(f"{work}/inst.pkr.hcl", "w").write(f'''source "qemu" "inst" {{
  iso_url              = "{inst}/installer.iso"
  iso_checksum         = "none"
  disk_size            = "64M"
  accelerator          = "tcg"
  memory               = 256
  http_directory       = "http"
  boot_wait            = "3s"
  boot_key_interval    = "10ms"
  boot_command         = ["install ks=http://{{{{ .HTTPIP }}}}:{{{{ .HTTPPort }}}}/answer.txt<enter>"]
  ssh_username         = "root"
  ssh_private_key_file = "{base}/id_ed25519"
  ssh_timeout          = "3m"
  shutdown_command     = "sync; poweroff"
}}
build {{
  sources = ["source.qemu.inst"]
  provisioner "shell" {{ inline = ["cat /root/installed-by"] }}
}}
''')
env = dict(os.environ, KILN_STORE=f"{work}/store")
rows = []
for i in range(runs):
    p = subprocess.run([os.path.join(root, "target/release/kiln"), "build", "-force", "inst.pkr.hcl"], cwd=work, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(p.stdout + p.stderr)
    m = re.search(r"build finished in ([\d.]+)s \((.*)\)", p.stdout)
    ph = {k: float(v) for k, v in re.findall(r"([\w-]+) ([\d.]+)s", m.group(2))}
    ph["wall"] = float(m.group(1))
    rows.append(ph)
    print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f}s" for k, v in ph.items()), flush=True)
print(f"\nmedian of {runs}:")
for k in ["wall", "boot", "boot-command", "install", "reboot", "provision", "shutdown", "export"]:
    print(f"  {k:<13} {statistics.median(r.get(k, 0) for r in rows):6.2f} s")
shutil.rmtree(work, ignore_errors=True)
