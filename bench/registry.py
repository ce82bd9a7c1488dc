#!/usr/bin/env python3
"""Push and pull throughput on loopback (issue 8): kiln against `skopeo copy` of the same image
(a 256 MiB disk of random bytes in a kiln store), to and from a real registry (Debian's
docker-registry) on 127.0.0.1, alternating, N runs (default 3), each into a new repository so
nothing is skipped.

    bench/registry.py [RUNS]
"""
import hashlib, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.chdir(root)
subprocess.run(["scripts/setup.sh"], check=True)
subprocess.run(["cargo", "build", "--release", "--locked", "-q"], check=True)
kiln = os.path.join(root, "target/release/kiln")
work = tempfile.mkdtemp(prefix="kiln-bench-registry-")
store = f"{work}/store"
size = 256 << 20

# A kiln store holding one image: disk layer, config, OCI manifest, index entry tagged "big".
os.makedirs(f"{store}/blobs/sha256"); os.makedirs(f"{store}/tmp")
def put(data):
    d = hashlib.sha256(data).hexdigest()
    p = f"{store}/blobs/sha256/{d}"
    open(p, "wb").write(data); os.chmod(p, 0o444)
    return {"digest": f"sha256:{d}", "size": len(data)}
disk = put(os.urandom(size))
cfg = put(json.dumps({"schemaVersion": 1, "name": "big", "disk": disk}).encode())
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "artifactType": "application/vnd.kiln.image.v1",
    "config": dict(cfg, mediaType="application/vnd.kiln.image.config.v1+json"),
    "layers": [dict(disk, mediaType="application/vnd.kiln.disk.raw", annotations={"org.opencontainers.image.title": "big.raw"})]}).encode()
m = put(manifest)
open(f"{store}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
    dict(m, mediaType="application/vnd.oci.image.manifest.v1+json", annotations={"org.opencontainers.image.ref.name": "big"})]}, open(f"{store}/index.json", "w"))

def start_registry(name):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    host = f"127.0.0.1:{port}"
    open(f"{work}/{name}.yml", "w").write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {work}/{name}\nhttp:\n  addr: {host}\n")
    reg = subprocess.Popen(["docker-registry", "serve", f"{work}/{name}.yml"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); break
        except OSError:
            time.sleep(0.05)
    return reg, host

env = dict(os.environ, KILN_STORE=store)
# skopeo remembers where blobs live (and then mounts instead of uploading): give it a fresh HOME.
skopeo_env = dict(os.environ, HOME=f"{work}/skopeo-home")

def timed(cmd, **kw):
    t = time.monotonic(); subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw); return time.monotonic() - t

res = {k: [] for k in ("kiln push", "skopeo push", "kiln pull", "skopeo pull")}
for i in range(runs):
    # A fresh registry per tool and run: nothing to skip or mount.
    rk, hk = start_registry(f"reg-k{i}")
    rs, hs = start_registry(f"reg-s{i}")
    try:
        res["kiln push"].append(timed([kiln, "push", "--plain-http", "big", f"{hk}/bench/big:v1"], env=env))
        res["skopeo push"].append(timed(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{store}:big", f"docker://{hs}/bench/big:v1"], env=skopeo_env))
        res["kiln pull"].append(timed([kiln, "pull", "--plain-http", f"{hk}/bench/big:v1"], env=dict(env, KILN_STORE=f"{work}/pull-k{i}")))
        res["skopeo pull"].append(timed(["skopeo", "copy", "--src-tls-verify=false", f"docker://{hs}/bench/big:v1", f"oci:{work}/pull-s{i}:big"], env=skopeo_env))
    finally:
        for r in (rk, rs):
            r.kill(); r.wait()
    shutil.rmtree(f"{work}/reg-k{i}", ignore_errors=True); shutil.rmtree(f"{work}/reg-s{i}", ignore_errors=True)
    shutil.rmtree(f"{work}/pull-k{i}", ignore_errors=True); shutil.rmtree(f"{work}/pull-s{i}", ignore_errors=True)
    shutil.rmtree(f"{work}/skopeo-home", ignore_errors=True)
    print(f"run {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in res.items()), flush=True)
med = statistics.median
print(f"\nmedian of {runs}, {size >> 20} MiB image:")
for k, v in res.items():
    print(f"  {k:<12} {med(v):6.2f} s  {size / med(v) / (1 << 20):7.1f} MiB/s")
print(f"  kiln/skopeo  push {med(res['kiln push']) / med(res['skopeo push']):.2f}x time, pull {med(res['kiln pull']) / med(res['skopeo pull']):.2f}x time")
shutil.rmtree(work, ignore_errors=True)
