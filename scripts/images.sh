#!/usr/bin/env bash
# Builds the agent and operator images without a Docker engine, as OCI image archives, and optionally imports them
# into a containerd. One definition per image: the final stage of agent/Dockerfile and operator/Dockerfile. This
# script reads it (COPY of the binary, USER, ENTRYPOINT, EXPOSE) and stands in for the distroless base the
# Dockerfile names (glibc and the libraries the binary links, CA certificates, the nonroot user 65532) by copying
# the binary's `ldd` closure from this machine. Also builds the pod sandbox ("pause") image from tests/node/pause.c,
# and the example backend (examples/backend/Dockerfile: server.mjs and the compiled @videodelivery/sign on the
# distroless Node.js 20 base, for which it copies this machine's /usr/bin/node, which must be Node.js 20, and its
# `ldd` closure to /nodejs/bin/node, the base's entrypoint; the SDK's dist/ is built first when missing or stale).
#
# Usage: bash scripts/images.sh [--profile release|debug | --bin-dir DIR] [--images "agent operator pause"]
#                               [--out DIR] [--import CONTAINERD_SOCKET]
# --images takes any of agent, operator, pause and backend (the default leaves the example backend out).
# --bin-dir takes the binaries from DIR instead of building them (the tests pass the ones `cargo test` built).
# Prints the archive paths and image names, one `name archive` pair a line.
# Image names are the chart's defaults (values.yaml repositories, Chart.yaml appVersion), so `helm install` with
# default values runs them (imagePullPolicy IfNotPresent never pulls an image that is present); the example backend
# is ghcr.io/videodelivery/example-backend:<appVersion>, archived as backend.tar.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
profile=release bin_dir="" images="agent operator pause" out="" import=""
while (($#)); do
  case $1 in
    --profile) profile=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    --images) images=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --import) import=$2; shift 2 ;;
    *) echo "images.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
target=${CARGO_TARGET_DIR:-$root/target}
out=${out:-$target/images}
mkdir -p "$out"
if [ -z "$bin_dir" ] && [[ " $images " == *" agent "* || " $images " == *" operator "* ]]; then
  flag=(); [ "$profile" = release ] && flag=(--release)
  (cd "$root" && cargo build -q --locked "${flag[@]}" -p videodelivery-agent -p videodelivery-operator --bins)
fi
bin_dir=${bin_dir:-$target/$profile}
[[ " $images " != *" pause "* ]] || gcc -static -Os -o "$out/pause" "$root/tests/node/pause.c"
if [[ " $images " == *" backend "* ]]; then
  # The Dockerfile's build stage, here: the SDK compiled into sdk/typescript/dist (kept when newer than its sources).
  sdk=$root/sdk/typescript
  if [ ! -e "$sdk/dist/src/index.js" ] || [ -n "$(find "$sdk/src" "$sdk/package.json" "$sdk/tsconfig.json" -newer "$sdk/dist/src/index.js" -print -quit)" ]; then
    [ -d "$sdk/node_modules" ] || (cd "$sdk" && npm ci --no-audit --no-fund >&2)
    (cd "$sdk" && npm run build >&2)
  fi
fi

python3 - "$root" "$bin_dir" "$out" "$images" <<'PY'
import hashlib, io, json, os, re, subprocess, sys, tarfile

root, bins, out, wanted = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()

def chart_default(key):
    """`repository` under the top-level `key` of the chart's values.yaml."""
    block = None
    for line in open(f"{root}/charts/videodelivery/values.yaml"):
        if re.match(r"^\S", line):
            block = line.split(":")[0]
        m = re.match(r"^\s+repository:\s*(\S+)", line)
        if m and block == key:
            return m.group(1)
    raise SystemExit(f"images.sh: no {key}.repository in values.yaml")

app_version = re.search(r'^appVersion:\s*"?([^"\n]+)"?', open(f"{root}/charts/videodelivery/Chart.yaml").read(), re.M).group(1)

def final_stage(dockerfile):
    """What the final stage of a Dockerfile puts in the image: base, files, user, entrypoint, ports."""
    lines = [l.strip() for l in open(dockerfile) if l.strip() and not l.lstrip().startswith("#")]
    last = max(i for i, l in enumerate(lines) if l.upper().startswith("FROM "))
    stage = {"base": lines[last].split()[1], "copy": [], "user": None, "entrypoint": None, "cmd": None,
             "workdir": None, "expose": []}
    for l in lines[last + 1:]:
        op, _, rest = l.partition(" ")
        op = op.upper()
        if op == "COPY":
            args = [a for a in rest.split() if not a.startswith("--")]
            stage["copy"].append((args[0], args[1], any(a.startswith("--from=") for a in rest.split())))
        elif op == "USER":
            stage["user"] = rest.strip()
        elif op == "ENTRYPOINT":
            stage["entrypoint"] = json.loads(rest)
        elif op == "CMD":
            stage["cmd"] = json.loads(rest)
        elif op == "WORKDIR":
            stage["workdir"] = rest.strip()
        elif op == "EXPOSE":
            stage["expose"] += rest.split()
        else:
            raise SystemExit(f"images.sh: {dockerfile}: {op} in the final stage is not understood; teach this script")
    return stage

def ldd(path):
    libs = []
    for line in subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs

class Layer:
    def __init__(self):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.dirs = set()

    def _info(self, name, kind, mode, uid=0):
        ti = tarfile.TarInfo(name.lstrip("/"))
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = kind, mode, uid, uid, 0
        return ti

    def dir(self, path, mode=0o755, uid=0):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                last = i == len(parts)
                self.tar.addfile(self._info(d, tarfile.DIRTYPE, mode if last else 0o755, uid if last else 0))

    def file(self, path, data, mode=0o644):
        self.dir(os.path.dirname(path))
        ti = self._info(path, tarfile.REGTYPE, mode)
        ti.size = len(data)
        self.tar.addfile(ti, io.BytesIO(data))

    def bytes(self):
        self.tar.close()
        return self.buf.getvalue()

def blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    os.makedirs(f"{layout}/blobs/sha256", exist_ok=True)
    with open(f"{layout}/blobs/sha256/{digest}", "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}

def archive(name, layer, config, file=None):
    """Writes an OCI image layout as a tar archive: one layer, the config, the manifest and the index."""
    import tempfile
    layout = tempfile.mkdtemp(dir=out)
    layer_bytes = layer.bytes()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = dict(config, architecture="amd64", os="linux", rootfs={"type": "layers", "diff_ids": [diff_id]})
    cfg = blob(layout, json.dumps(config, sort_keys=True).encode())
    lay = blob(layout, layer_bytes)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": dict(cfg, mediaType="application/vnd.oci.image.config.v1+json"),
                "layers": [dict(lay, mediaType="application/vnd.oci.image.layer.v1.tar")]}
    man = blob(layout, json.dumps(manifest, sort_keys=True).encode())
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [dict(man, mediaType="application/vnd.oci.image.manifest.v1+json",
                                platform={"architecture": "amd64", "os": "linux"},
                                annotations={"io.containerd.image.name": name,
                                             "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]})]}
    with open(f"{layout}/index.json", "w") as f:
        json.dump(index, f)
    with open(f"{layout}/oci-layout", "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    path = f"{out}/{file or name.split('/')[-1].split(':')[0]}.tar"
    with tarfile.open(path + ".tmp", "w") as t:
        for entry in sorted(os.listdir(layout)):
            t.add(f"{layout}/{entry}", arcname=entry)
    os.replace(path + ".tmp", path)
    subprocess.run(["rm", "-rf", layout], check=True)
    print(name, path)

# The distroless cc-debian12:nonroot base, as far as our binaries use it.
DISTROLESS_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                  "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"]

def distroless_layer():
    """What every distroless :nonroot base has: the users, CA certificates, /tmp and the nonroot home."""
    layer = Layer()
    layer.file("/etc/passwd", b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
    layer.file("/etc/group", b"root:x:0:\nnonroot:x:65532:\n")
    if os.path.exists("/etc/ssl/certs/ca-certificates.crt"):
        layer.file("/etc/ssl/certs/ca-certificates.crt", open("/etc/ssl/certs/ca-certificates.crt", "rb").read())
    layer.dir("/tmp", 0o1777)
    layer.dir("/home/nonroot", 0o700, 65532)
    return layer

def rust_image(component, values_key):
    stage = final_stage(f"{root}/{component}/Dockerfile")
    if not stage["base"].startswith("gcr.io/distroless/cc-debian12:nonroot"):
        raise SystemExit(f"images.sh: {component}/Dockerfile is based on {stage['base']}; teach this script that base")
    if stage["cmd"] or stage["workdir"]:
        raise SystemExit(f"images.sh: {component}/Dockerfile: CMD and WORKDIR are not expected here; teach this script")
    layer = distroless_layer()
    for src, dst, _ in stage["copy"]:
        binary = f"{bins}/{os.path.basename(src)}"
        stripped = f"{out}/{os.path.basename(src)}.stripped"
        # Debug info is not needed to run (symbols stay, so backtraces keep function names).
        subprocess.run(["objcopy", "--strip-debug", binary, stripped], check=True)
        layer.file(dst, open(stripped, "rb").read(), 0o755)
        os.remove(stripped)
        for lib in ldd(binary):
            layer.file(lib, open(os.path.realpath(lib), "rb").read(), 0o755)
    config = {"config": {"User": stage["user"], "Entrypoint": stage["entrypoint"], "Env": DISTROLESS_ENV,
                         "WorkingDir": "/home/nonroot",
                         "ExposedPorts": {(p if "/" in p else p + "/tcp"): {} for p in stage["expose"]}}}
    archive(f"{chart_default(values_key)}:{app_version}", layer, config)

# The distroless nodejs20-debian12:nonroot base: Node.js at /nodejs/bin/node, which is the entrypoint.
NODE = "/nodejs/bin/node"

def node_image(dockerfile, name, file):
    stage = final_stage(f"{root}/{dockerfile}")
    if not stage["base"].startswith("gcr.io/distroless/nodejs20-debian12:nonroot"):
        raise SystemExit(f"images.sh: {dockerfile} is based on {stage['base']}; teach this script that base")
    import shutil
    node = os.path.realpath(shutil.which("node") or "/usr/bin/node")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    if not version.startswith("v20."):
        raise SystemExit(f"images.sh: {dockerfile} runs Node.js 20; this machine's {node} is {version}")
    layer = distroless_layer()
    layer.file(NODE, open(node, "rb").read(), 0o755)
    for lib in ldd(node):
        layer.file(lib, open(os.path.realpath(lib), "rb").read(), 0o755)
    # The build stage works in /src, a copy of the repository (the build context); a COPY from the context names a
    # path in the repository. Either way the file is here under the same relative path.
    for src, dst, from_build in stage["copy"]:
        if from_build and not src.startswith("/src/"):
            raise SystemExit(f"images.sh: {dockerfile}: COPY --from of {src}, outside /src; teach this script")
        here = f"{root}/{src[len('/src/'):] if from_build else src}"
        if os.path.isdir(here):
            for d, _, files in sorted(os.walk(here)):
                for f in sorted(files):
                    rel = os.path.relpath(f"{d}/{f}", here)
                    layer.file(f"{dst}/{rel}", open(f"{d}/{f}", "rb").read())
        else:
            layer.file(dst, open(here, "rb").read())
    config = {"config": {"User": stage["user"], "Entrypoint": stage["entrypoint"] or [NODE], "Cmd": stage["cmd"],
                         "Env": DISTROLESS_ENV, "WorkingDir": stage["workdir"] or "/home/nonroot",
                         "ExposedPorts": {(p if "/" in p else p + "/tcp"): {} for p in stage["expose"]}}}
    archive(f"{name}:{app_version}", layer, config, file)

if "agent" in wanted:
    rust_image("agent", "agentImage")
if "operator" in wanted:
    rust_image("operator", "image")
if "pause" in wanted:
    pause = Layer()
    pause.file("/pause", open(f"{out}/pause", "rb").read(), 0o755)
    archive("registry.local/pause:3.10", pause, {"config": {"Entrypoint": ["/pause"], "User": "65535:65535"}})
if "backend" in wanted:
    node_image("examples/backend/Dockerfile", "ghcr.io/videodelivery/example-backend", "backend")
PY

if [ -n "$import" ]; then
  ctr=${VD_CTR:-$(bash "$root/tests/node/build.sh")/ctr}
  for image in $images; do
    "$ctr" --address "$import" -n k8s.io images import "$out/$image.tar" >/dev/null
  done
fi
