#!/usr/bin/env bash
# Wheelhouse for an air-gapped GPU node, built on a connected machine: every wheel medsft needs for the
# node's Python and platform EXCEPT torch (and its nvidia-*/triton wheels: the node has a CUDA torch).
# The list comes from pyproject.toml ([project].dependencies minus torch, plus the extras asked for), at the
# versions CI tested (medsft/constraints.txt) unless --unlocked.
# Usage: launch/offline_bundle.sh [OPTIONS] [WHEELHOUSE]
#   launch/offline_bundle.sh                                 # -> wheelhouse/ for CPython 3.12, manylinux x86_64
#   launch/offline_bundle.sh --extras deepspeed,kernels out/  # optional extras too
#   launch/offline_bundle.sh --present @node-freeze.txt      # leave out what the node already has
#   launch/offline_bundle.sh --present @launch/gpu-node-packages.txt  # this workplace's GPU nodes (the list shipped)
#   launch/offline_bundle.sh --host /tmp/wh                  # for this machine's own Python and platform
# Options (environment variable in brackets):
#   --python-version X.Y   target CPython [MEDSFT_BUNDLE_PYTHON_VERSION, 3.12]
#   --glibc X.Y            newest manylinux glibc the node accepts [MEDSFT_BUNDLE_GLIBC, 2.28]
#   --arch ARCH            [MEDSFT_BUNDLE_ARCH, x86_64]
#   --host                 this machine's Python and platform (the Python that runs pip: $PYTHON)
#   --extras A,B           optional extras of medsft (deepspeed, kernels)
#   --torch VER            the node's torch: resolution uses it, nothing is downloaded [2.11.0]
#   --cuda X.Y|all         the CUDA version the node's torch is built for (torch.version.cuda): the bitsandbytes
#                          wheel is repacked (same name and version) with its CPU library and its CUDA X.*
#                          libraries only, no ROCm/XPU ones (43 MB -> 7 MB for 13.0); bitsandbytes loads the
#                          library of torch's CUDA version, else the nearest of the same major, so a torch
#                          built for another major needs its own --cuda. all: the wheel as published
#                          [MEDSFT_BUNDLE_CUDA, 13.0: torch 2.11.0+cu130]
#   --present SPEC         what the node has: NAME==VER,NAME,... or @FILE (pip freeze); each is left out
#                          when its version meets every requirement (a name alone is trusted)
#   --max-core-mb N        exit 3 (the wheelhouse still written) when the core set is larger; 0: no limit
#                          [MEDSFT_BUNDLE_MAX_CORE_MB, 60]
#   --unlocked             the newest releases within pyproject.toml's bounds, not the tested set
#                          (medsft/constraints.txt; use this when the tested set has no wheel for the target)
#   --print-requirements   print the requirements read from pyproject.toml (torch left out) and exit
# "core" = the wheels for medsft's runtime dependencies (no extras) that land in the wheelhouse: with
# --present, what the node lacks. The complete set is ~149 MB (~185 with --cuda all; pyarrow alone is 55).
# launch/gpu-node-packages.txt: what the GPU nodes' image holds (versions where known, names alone are trusted);
# for another node, `python3 -m pip freeze` there gives the file to pass.
# $PYTHON (default python3) runs pip (and builds sdist-only packages such as DeepSpeed, which needs
# torch there). Its environment markers are the ones pip evaluates: prefer the target's minor version.
# On the node, the last lines printed say how to install (a venv, or a --target dir on PYTHONPATH).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
py_version=${MEDSFT_BUNDLE_PYTHON_VERSION:-3.12}
glibc=${MEDSFT_BUNDLE_GLIBC:-2.28}
arch=${MEDSFT_BUNDLE_ARCH:-x86_64}
max_core_mb=${MEDSFT_BUNDLE_MAX_CORE_MB:-60}
cuda=${MEDSFT_BUNDLE_CUDA:-13.0}
torch_version=2.11.0
triton_version=3.6.0  # only stands in when an extra asks for triton (liger-kernel): the node's torch has it
host=0 extras="" present="" print_reqs=0 wheelhouse="" locked=1

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --python-version) py_version=${2:?}; shift ;;
    --glibc) glibc=${2:?}; shift ;;
    --arch) arch=${2:?}; shift ;;
    --host) host=1 ;;
    --extras) extras=${2:?}; shift ;;
    --torch) torch_version=${2:?}; shift ;;
    --cuda) cuda=${2:?}; shift ;;
    --present) present=${2:?}; shift ;;
    --max-core-mb) max_core_mb=${2:?}; shift ;;
    --print-requirements) print_reqs=1 ;;
    --unlocked) locked=0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [ -z "$wheelhouse" ] || die "one WHEELHOUSE only"; wheelhouse=$1 ;;
  esac
  shift
done
wheelhouse=${wheelhouse:-wheelhouse}
[[ $cuda == all || $cuda =~ ^[0-9]+\.[0-9]+$ ]] || die "--cuda takes X.Y (torch.version.cuda, e.g. 13.0) or all, not $cuda"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
helper=$work/helper.py
cat >"$helper" <<'PY'
"""Helper for offline_bundle.sh: requirements, stand-in wheels, the download plan, sizes."""
import base64, hashlib, json, os, re, shutil, subprocess, sys, tempfile, zipfile
from pathlib import Path
try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib
try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    from pip._vendor.packaging.version import Version

EXCLUDED = re.compile(r"^(torch|triton|nvidia-.*)$")  # what the node's CUDA torch brings
STUB = "medsftstub"


def requirements(pyproject, extras):
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    lines = list(project["dependencies"])
    for extra in filter(None, extras.split(",")):
        if extra not in project.get("optional-dependencies", {}):
            sys.exit(f"error: medsft has no extra {extra!r} (it has: {', '.join(project['optional-dependencies'])})")
        lines += project["optional-dependencies"][extra]
    for line in lines:
        if canonicalize_name(Requirement(line).name) != "torch":
            print(line)


def stub(directory, name, version):
    """An empty wheel that satisfies the resolver in place of NAME: nothing of it is ever downloaded."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: medsft\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
                     f"{len(text.encode())}\n" for path, text in files.items())
    files[f"{dist}/RECORD"] = record + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(Path(directory) / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)


def parse_present(spec):
    """NAME==VER,NAME,... or @FILE with `pip freeze` lines -> {name: version or None}."""
    if spec.startswith("@"):
        items = Path(spec[1:]).read_text().splitlines()
    else:
        items = spec.split(",")
    out = {}
    for item in items:
        item = item.split("#")[0].strip()
        if not item or item.startswith("-"):
            continue
        name, _, version = item.partition("==")
        name = re.split(r"[ @;\[<>=!~]", name.strip())[0]
        out[canonicalize_name(name)] = version.strip() or None
    return out


def meets(version, specifier):
    try:
        return specifier.contains(Version(version), prereleases=True)
    except ValueError:  # not a PEP 440 version: bundle ours rather than guess
        return False


def plan(core_report, full_report, present_spec, host, py_version, arch, keep_file):
    """Which resolved packages to download (pinned) and which the node has. Only what medsft reaches through
    bundled packages is kept: the dependencies of a package the node has are the node's business."""
    env = default_environment()
    if not host:
        env.update(python_version=py_version, python_full_version=py_version + ".0", implementation_name="cpython",
                   platform_python_implementation="CPython", sys_platform="linux", platform_system="Linux",
                   platform_machine=arch, os_name="posix")
    core = {canonicalize_name(i["metadata"]["name"]) for i in json.loads(Path(core_report).read_text())["install"]}
    items = {canonicalize_name(i["metadata"]["name"]): i for i in json.loads(Path(full_report).read_text())["install"]}
    present = parse_present(present_spec) if present_spec else {}
    present.pop("medsft", None)  # an older medsft on the node is replaced, never kept
    deps = {}  # name -> [(dependency, specifier)] for the target, with the extras asked of it
    for name, item in items.items():
        extras = (item.get("requested_extras") or []) + [""]
        reqs = [Requirement(line) for line in item["metadata"].get("requires_dist") or []]
        deps[name] = [(canonicalize_name(r.name), r.specifier) for r in reqs
                      if r.marker is None or any(r.marker.evaluate({**env, "extra": e}) for e in extras)]
    requirers, notes = set(items), {}
    while True:  # fewer bundled packages -> fewer requirements -> more of the node's packages do: to a fixed point
        skip = set()
        for name, have in present.items():
            specs = [s for r in requirers for d, s in deps[r] if d == name]
            unmet = [str(s) for s in specs if have is not None and not meets(have, s)]
            if name in items and not unmet:
                skip.add(name)
            elif unmet:
                notes[name] = f"the node's {name} {have} does not meet {','.join(unmet)}: bundling {items[name]['metadata']['version']}"
        reach, todo = set(), ["medsft"]
        while todo:
            name = todo.pop()
            if name in reach or name in skip or name not in items:
                continue
            reach.add(name)
            todo += [d for d, _ in deps[name]]
        if reach == requirers:
            break
        requirers = reach
    keep, bad = [], []
    for name in sorted(reach):
        item = items[name]
        version = item["metadata"]["version"]
        if STUB in version:
            continue
        if EXCLUDED.match(name):
            bad.append(f"{name} {version}")
        url = item["download_info"]["url"]
        keep.append(url if url.startswith("file:") and name == "medsft" else f"{name}=={version}")
    if bad:
        sys.exit("error: the resolution asks for " + ", ".join(bad) + ", which the node's torch brings; "
                 "name it in --present (or --torch) instead of bundling it")
    for name in sorted(notes):
        if name in reach:
            print("  " + notes[name])
    Path(keep_file).write_text("\n".join(keep) + "\n")
    Path(keep_file + ".core").write_text("\n".join(sorted(core)) + "\n")
    if present:
        print(f"left out (the node has them): {' '.join(sorted(skip & set(items))) or 'nothing'}")


BNB_LIB = re.compile(r"^bitsandbytes/(?:lib)?bitsandbytes_(cuda|rocm|xpu)(\d*)\.(?:so|dll|dylib)$")


def record_problems(wheel):
    """What in WHEEL's RECORD does not match its content (hash, size, a file missing or not listed)."""
    problems = []
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
        record = next((n for n in names if re.fullmatch(r"[^/]+\.dist-info/RECORD", n)), None)
        if record is None:
            return ["no RECORD"]
        rows = {}
        for line in z.read(record).decode().splitlines():
            if line.strip():
                path, digest, size = line.rsplit(",", 2)
                rows[path.strip('"')] = (digest, size)
        for name in names:
            if name == record or name.endswith((".dist-info/RECORD.jws", ".dist-info/RECORD.p7s")):
                continue
            data = z.read(name)
            digest = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            if name not in rows:
                problems.append(f"{name}: not in RECORD")
            elif rows[name] != (digest, str(len(data))):
                problems.append(f"{name}: RECORD says {rows[name]}, the file is {(digest, str(len(data)))}")
        problems += [f"{path}: in RECORD, not in the wheel" for path in rows if path != record and path not in names]
    return problems


def bnb_loads(available, version):
    """The CUDA library bitsandbytes' cextension.get_cuda_bnb_library_path picks for torch.version.cuda =
    VERSION (no BNB_CUDA_VERSION): the same version, else the highest lower one of the same major, else the
    lowest higher one of the same major; None when the major has none."""
    same = [v for v in available if v[0] == version[0]]
    if version in same:
        return version
    lower = [v for v in same if v < version]
    return max(lower) if lower else min(same) if same else None


def slim(wheelhouse, cuda):
    """Repack the bitsandbytes wheel with its CPU library and the CUDA libraries of CUDA's major only, through
    the wheel tool's unpack and pack (which writes RECORD anew); same file name, so pip takes it as published."""
    want = tuple(int(x) for x in cuda.split("."))
    for wheel in sorted(Path(wheelhouse).glob("bitsandbytes-*.whl")):
        with zipfile.ZipFile(wheel) as z:
            libs = {n: m for n in z.namelist() if (m := BNB_LIB.match(n))}
        cudas = {(int(m[2][:2]), int(m[2][2:])): n for n, m in libs.items() if m[1] == "cuda" and len(m[2]) >= 3}
        keep = {v: n for v, n in cudas.items() if v[0] == want[0]}
        if not keep:
            print(f"error: {wheel.name} has no CUDA {want[0]} library (it has CUDA "
                  f"{', '.join(f'{a}.{b}' for a, b in sorted(cudas)) or 'none'}): --cuda another version, or all",
                  file=sys.stderr)
            sys.exit(2)
        loads = keep[bnb_loads(keep, want)].split("/")[-1]
        drop = sorted(n for n in libs if n not in keep.values())
        short = lambda n: BNB_LIB.match(n)[1] + BNB_LIB.match(n)[2]
        if not drop:
            print(f"bitsandbytes: nothing to drop for CUDA {cuda} (torch built for it loads {loads})")
            continue
        before = wheel.stat().st_size
        with tempfile.TemporaryDirectory() as tmp:
            def tool(*args):
                res = subprocess.run([sys.executable, "-m", "wheel", *map(str, args)], capture_output=True, text=True)
                if res.returncode:
                    sys.exit(f"error: wheel {args[0]} failed on {wheel.name}:\n{res.stdout}{res.stderr}")

            Path(tmp, "out").mkdir()
            tool("unpack", "-d", Path(tmp, "src"), wheel)
            (tree,) = Path(tmp, "src").iterdir()
            for name in drop:
                (tree / name).unlink()
            tool("pack", "-d", Path(tmp, "out"), tree)
            (packed,) = Path(tmp, "out").glob("*.whl")
            if packed.name != wheel.name:
                sys.exit(f"error: the repacked wheel is {packed.name}, not {wheel.name}")
            problems = record_problems(packed)
            if problems:
                sys.exit(f"error: the repacked {packed.name}'s RECORD does not match it: {problems[:5]}")
            shutil.move(packed, wheel)
        print(f"bitsandbytes for CUDA {cuda}: kept cpu, {', '.join(short(n) for n in sorted(keep.values()))} "
              f"(torch built for CUDA {cuda} loads {loads}); dropped {' '.join(short(n) for n in drop)}: "
              f"{before / 1e6:.1f} MB -> {wheel.stat().st_size / 1e6:.1f} MB")


def sizes(wheelhouse, core_file, max_core_mb):
    core = set(Path(core_file).read_text().split())
    wheels = sorted(Path(wheelhouse).glob("*.whl"), key=lambda p: -p.stat().st_size)
    forbidden = [w.name for w in wheels if EXCLUDED.match(canonicalize_name(w.name.split("-")[0]))]
    if forbidden:
        sys.exit(f"error: torch's wheels landed in {wheelhouse}: {forbidden}")
    mb = lambda ws: sum(w.stat().st_size for w in ws) / 1e6
    core_wheels = [w for w in wheels if canonicalize_name(w.name.split("-")[0]) in core]
    print(f"total: {mb(wheels):.1f} MB ({len(wheels)} wheels)")
    print(f"core: {mb(core_wheels):.1f} MB ({len(core_wheels)} wheels: medsft's runtime dependencies, no extras, no torch)")
    print("largest: " + ", ".join(f"{w.name.split('-')[0]} {w.stat().st_size / 1e6:.1f}" for w in wheels[:5]))
    if max_core_mb > 0 and mb(core_wheels) > max_core_mb:
        print(f"error: the core set is {mb(core_wheels):.1f} MB, over {max_core_mb:g} MB; the largest core wheels: "
              + ", ".join(f"{w.name} ({w.stat().st_size / 1e6:.1f} MB)" for w in core_wheels[:5])
              + ". Leave out what the node has (--present) or raise --max-core-mb.", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "requirements":
        requirements(*args)
    elif command == "stub":
        stub(*args)
    elif command == "plan":
        plan(args[0], args[1], args[2], args[3] == "1", *args[4:])
    elif command == "slim":
        slim(*args)
    elif command == "sizes":
        sizes(args[0], args[1], float(args[2]))
PY

if [ "$print_reqs" = 1 ]; then
  "$PYTHON" "$helper" requirements "$repo/pyproject.toml" "$extras"
  exit 0
fi
"$PYTHON" "$helper" requirements "$repo/pyproject.toml" "$extras" >"$work/requirements.txt"
mapfile -t reqs <"$work/requirements.txt"

# The target: pip matches manylinux_2_N exactly, so every N from 17 to the node's glibc is named.
target=(--only-binary=:all:)
if [ "$host" = 0 ]; then
  target+=(--implementation cp --python-version "$py_version")
  for ((n = ${glibc#*.}; n >= 17; n--)); do target+=(--platform "manylinux_2_${n}_${arch}"); done
  target+=(--platform "manylinux2014_${arch}" --platform "manylinux_2_12_${arch}" --platform "manylinux2010_${arch}"
           --platform "manylinux_2_5_${arch}" --platform "manylinux1_${arch}")
  echo "target: CPython $py_version, manylinux (glibc <= $glibc) $arch; torch $torch_version on the node"
else
  echo "target: this machine ($("$PYTHON" -c 'import sys, sysconfig; print(sys.implementation.name, sys.version.split()[0], sysconfig.get_platform())'))"
fi
pip=("$PYTHON" -m pip)
mkdir -p "$work/stubs" "$work/built" "$work/src"
"$PYTHON" "$helper" stub "$work/stubs" torch "$torch_version+medsftstub"
"$PYTHON" "$helper" stub "$work/stubs" triton "$triton_version+medsftstub"
printf 'torch==%s+medsftstub\ntriton==%s+medsftstub\n' "$torch_version" "$triton_version" >"$work/constraints.txt"
lock=()
if [ "$locked" = 1 ]; then  # the versions CI passed with (python .ci/lock.py); torch is the node's
  lock=(-c "$repo/medsft/constraints.txt")
  echo "versions: the tested set, medsft/constraints.txt (--unlocked: the newest within pyproject.toml's bounds)"
fi
resolve=(--find-links "$work/stubs" --find-links "$work/built" -c "$work/constraints.txt" "${lock[@]}" "${target[@]}")

# medsft itself, built from a copy of the package (a stale build/ in the checkout never leaks in).
cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/medsft" "$work/src/"
find "$work/src/medsft" -name __pycache__ -prune -exec rm -rf {} +
"${pip[@]}" wheel -q --no-deps -w "$work/built" "$work/src" >/dev/null
medsft_wheel=$(ls "$work"/built/medsft-*.whl)

# Packages with no wheel for the target (DeepSpeed is an sdist): build a wheel here; only pure ones travel.
dry=("${pip[@]}" install -q --dry-run --ignore-installed --target "$work/t")
if ! "${dry[@]}" --no-deps "${lock[@]}" "${target[@]}" "${reqs[@]}" >/dev/null 2>&1; then
  for req in "${reqs[@]}"; do
    "${dry[@]}" --no-deps "${lock[@]}" "${target[@]}" "$req" >/dev/null 2>&1 && continue
    echo "building a wheel for $req (no wheel for the target)"
    DS_BUILD_OPS=0 "${pip[@]}" wheel -q --no-deps --no-build-isolation "${lock[@]}" -w "$work/built" "$req" >/dev/null \
      || die "could not build $req here (DeepSpeed's setup.py imports torch: run with a PYTHON that has torch)"
  done
  for built in "$work"/built/*.whl; do
    [ "$host" = 1 ] || [[ $built == *-py3-none-any.whl ]] || die "${built##*/} was built for this machine, not the target"
  done
fi

# Resolve medsft (core) and medsft[extras] (full) against torch's stand-in; nothing is downloaded yet.
unresolved="pip found no set of wheels for the target (its message is above)"
[ "$locked" = 0 ] || unresolved+=" at the tested versions, medsft/constraints.txt: pass --unlocked for the newest releases within pyproject.toml's bounds"
"${dry[@]}" "${resolve[@]}" --report "$work/core.json" "medsft @ file://$medsft_wheel" || die "$unresolved"
if [ -n "$extras" ]; then
  "${dry[@]}" "${resolve[@]}" --report "$work/full.json" "medsft[$extras] @ file://$medsft_wheel" || die "$unresolved"
else
  cp "$work/core.json" "$work/full.json"
fi
"$PYTHON" "$helper" plan "$work/core.json" "$work/full.json" "$present" "$host" "$py_version" "$arch" "$work/keep.txt"

# Download the plan: one pinned wheel per package, no dependency resolution (torch can't slip in).
mkdir -p "$wheelhouse"
if ls "$wheelhouse"/*.whl >/dev/null 2>&1; then
  [ -f "$wheelhouse/.medsft-wheelhouse" ] || die "$wheelhouse holds wheels from elsewhere: use an empty folder"
  rm -f "$wheelhouse"/*.whl
fi
touch "$wheelhouse/.medsft-wheelhouse"
"${pip[@]}" download -q --no-deps -d "$wheelhouse" --find-links "$work/built" "${target[@]}" -r "$work/keep.txt"
# bitsandbytes for the node's CUDA only (--cuda): the wheel tool (unpack, pack) from $PYTHON, else a temporary copy.
if [ "$cuda" != all ] && compgen -G "$wheelhouse/bitsandbytes-*.whl" >/dev/null; then
  wheel_tool=()
  if ! "$PYTHON" -m wheel version >/dev/null 2>&1; then
    "${pip[@]}" install -q --target "$work/wheel-tool" wheel >/dev/null || die "could not install the wheel tool (--cuda all skips the repack)"
    wheel_tool=(env "PYTHONPATH=$work/wheel-tool${PYTHONPATH:+:$PYTHONPATH}")
  fi
  "${wheel_tool[@]}" "$PYTHON" "$helper" slim "$wheelhouse" "$cuda"
fi
sed "s|^file://.*|medsft==$(basename "$medsft_wheel" | cut -d- -f2)|" "$work/keep.txt" >"$wheelhouse/requirements.txt"

status=0
"$PYTHON" "$helper" sizes "$wheelhouse" "$work/keep.txt.core" "$max_core_mb" || status=$?
[ "$status" = 0 ] || [ "$status" = 3 ] || exit "$status"
w=${wheelhouse%/}
spec=medsft${extras:+[$extras]}
cat <<EOF
wheelhouse: $w (pinned list: requirements.txt). Carry it to the node; there, with torch already installed,
into the active environment:
  pip install --no-index --find-links $w '$spec'
or, where site-packages is read-only (--target ignores what is installed, hence --no-deps and every wheel):
  pip install --no-index --no-deps --target DIR $w/*.whl && export PYTHONPATH=DIR
EOF
exit "$status"
