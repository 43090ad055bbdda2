"""launch/offline_bundle.sh: the wheelhouse for an air-gapped GPU node (everything but torch), and an
install from it with no index that trains. The slow test needs PyPI (CI has it); the others run anywhere."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # pip installs and whole-pipeline runs

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

SCRIPT = REPO / "launch" / "offline_bundle.sh"
NODE_PACKAGES = REPO / "launch" / "gpu-node-packages.txt"  # what the lent GPU nodes hold (KINDS.md)
# What a GPU node's image already holds beside torch (docs/air-gapped.md): installed in the test's "node" venv
# from the complete wheelhouse, then declared with --present so that only the rest is bundled.
NODE_STACK = ["numpy", "pandas", "pyarrow", "matplotlib", "pyyaml", "rich", "accelerate", "peft", "safetensors",
              "tokenizers", "huggingface_hub", "transformers"]


def bundle(*args, timeout=900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def dist_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def off_the_lock(wheelhouse) -> list[str]:
    """Wheels whose version differs from the tested set's pin (medsft/constraints.txt) for that package."""
    pins = {dist_name(line): line.split("==")[1].strip()
            for line in (REPO / "medsft" / "constraints.txt").read_text().splitlines() if "==" in line}
    wheels = [p.name.split("-")[:2] for p in wheelhouse.glob("*.whl")]
    return [f"{name}=={version} (tested: {pins[dist_name(name)]})" for name, version in wheels
            if dist_name(name) in pins and pins[dist_name(name)] != version]


def test_help_prints_usage():
    res = bundle("--help")
    assert res.returncode == 0, res.stderr
    assert "Wheelhouse for an air-gapped GPU node" in res.stdout
    for option in ("--python-version", "--glibc", "--host", "--extras", "--torch", "--cuda", "--present",
                   "--max-core-mb", "--print-requirements", "@launch/gpu-node-packages.txt"):
        assert option in res.stdout
    assert "set -euo" not in res.stdout  # the header only


def test_unknown_option_is_one_line_and_exit_2():
    res = bundle("--frobnicate")
    assert res.returncode == 2 and res.stderr.strip() == "error: unknown option --frobnicate (see --help)"


def test_cuda_takes_a_version_or_all():
    for bad in ("13", "cu130", "13.0.1"):
        res = bundle("--cuda", bad, "--print-requirements")
        assert res.returncode == 2 and res.stderr.strip().startswith("error: --cuda takes X.Y"), (bad, res.stderr)
    for good in ("13.0", "12.8", "all"):
        assert bundle("--cuda", good, "--print-requirements").returncode == 0


def test_node_package_list_is_pip_freeze_style():
    lines = [line.split("#")[0].strip() for line in NODE_PACKAGES.read_text().splitlines()]
    entries = dict(line.partition("==")[::2] for line in lines if line)
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9-]*", name) for name in entries), entries
    # The versions read on the node (KINDS.md); transformers is the one medsft must bring itself.
    assert entries["torch"] == "2.11.0" and entries["transformers"] == "5.17.0" and entries["numpy"] == "2.5.2"
    assert not {"trl", "bitsandbytes", "datasets", "deepspeed", "pydantic", "medsft"} & set(entries)


def test_requirements_are_pyprojects_minus_torch():
    project = pyproject()
    runtime = [r for r in project["dependencies"] if dist_name(r) != "torch"]
    assert len(runtime) == len(project["dependencies"]) - 1  # torch is there, and only torch goes
    res = bundle("--print-requirements")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == runtime
    res = bundle("--print-requirements", "--extras", "deepspeed,kernels")
    extras = project["optional-dependencies"]
    assert res.stdout.splitlines() == runtime + extras["deepspeed"] + extras["kernels"]
    res = bundle("--print-requirements", "--extras", "nope")
    assert res.returncode != 0 and "no extra 'nope'" in res.stderr


def pypi_unreachable() -> str | None:
    try:
        urllib.request.urlopen(urllib.request.Request("https://pypi.org/simple/pip/", method="HEAD"), timeout=5)
    except urllib.error.HTTPError:
        return None  # it answered
    except OSError as err:
        return f"PyPI is unreachable from here ({err}): the wheelhouse is downloaded from it"
    return None


def need_pypi() -> None:
    """The wheelhouse is downloaded from PyPI: without it, skip on a developer's machine, fail in CI (where
    .ci/run has just installed from it, so an unreachable PyPI is a broken CI, not a reason to prove nothing)."""
    reason = pypi_unreachable()
    if reason and os.environ.get("CI"):
        pytest.fail(reason)
    if reason:
        pytest.skip(reason)


def torch_wheels(folder) -> list[str]:
    names = [(p.name, dist_name(p.name.split("-")[0])) for p in folder.glob("*.whl")]
    return [f for f, n in names if n in ("torch", "triton") or n.startswith("nvidia")]


def core_mb(stdout: str) -> float:
    match = re.search(r"^core: ([0-9.]+) MB", stdout, re.M)
    assert match, stdout
    return float(match.group(1))


def record_problems(wheel) -> list[str]:
    """Where a wheel's RECORD disagrees with its content (sha256, size, a file missing or unlisted)."""
    with zipfile.ZipFile(wheel) as z:
        files = {n: z.read(n) for n in z.namelist() if not n.endswith("/")}
    (record,) = [n for n in files if re.fullmatch(r"[^/]+\.dist-info/RECORD", n)]
    rows = dict((path, (digest, size)) for path, digest, size in
                (line.rsplit(",", 2) for line in files[record].decode().splitlines() if line))
    problems = [f"{n}: not in the wheel" for n in rows if n not in files]
    for name, data in files.items():
        if name == record:
            continue
        digest = "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        if rows.get(name) != (digest, str(len(data))):
            problems.append(f"{name}: RECORD {rows.get(name)}, content {(digest, len(data))}")
    return problems


def offline_pip_env() -> dict:
    """No index, no pip configuration (this machine's adds local wheel folders): the wheelhouse alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.mark.slow
def test_wheelhouse_installs_offline_and_trains(tmp_path):
    need_pypi()
    clock, t0 = {}, time.monotonic()

    def lap(name):
        nonlocal t0
        clock[name] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()

    def check(res, what):
        assert res.returncode == 0, f"{what} failed ({clock}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
        return res

    # 1. The complete wheelhouse for this machine's Python: everything medsft needs, torch never.
    full = tmp_path / "wheelhouse-full"
    res = check(bundle("--host", "--torch", "2.13.0", "--max-core-mb", "0", full), "offline_bundle.sh (complete)")
    lap("bundle complete")
    assert torch_wheels(full) == []
    assert off_the_lock(full) == [], "the wheelhouse left the tested set"
    assert (full / "requirements.txt").is_file() and list(full.glob("medsft-*.whl"))
    assert "pip install --no-index --find-links" in res.stdout and "--target DIR" in res.stdout
    names = {dist_name(p.name.split("-")[0]) for p in full.glob("*.whl")}
    assert {dist_name(r) for r in pyproject()["dependencies"]} - names == {"torch"}

    # 2. A "node": a fresh venv with the CPU torch on disk here (pip's configuration finds it), then the
    #    node's usual stack from that wheelhouse with no index.
    venv = tmp_path / "node"
    check(subprocess.run([sys.executable, "-m", "venv", venv], capture_output=True, text=True), "venv")
    py = str(venv / "bin" / "python")
    # --no-compile: the node's image is not what is tested, and byte-compiling torch is most of its install time
    check(subprocess.run([py, "-m", "pip", "install", "-q", "--no-compile", "torch==2.13.0"], capture_output=True,
                         text=True, timeout=900), "pip install torch")
    lap("venv + torch")
    check(subprocess.run([py, "-m", "pip", "install", "-q", "--no-compile", "--no-index", "--find-links", full,
                          *NODE_STACK],
                         env=offline_pip_env(), capture_output=True, text=True, timeout=900), "node stack")
    lap("node stack (offline)")
    freeze = check(subprocess.run([py, "-m", "pip", "freeze"], capture_output=True, text=True), "pip freeze").stdout
    # The node's accelerate claims to be too old: the bundle must bring a newer one, not trust the name.
    present = tmp_path / "present.txt"
    present.write_text(re.sub(r"(?m)^accelerate==.*$", "accelerate==1.0.0", freeze))

    # 3. The node's wheelhouse: only what it lacks, under the 60 MB core budget, torch never.
    node_wh = tmp_path / "wheelhouse"
    res = check(bundle("--host", "--torch", "2.13.0", "--present", f"@{present}", node_wh), "offline_bundle.sh")
    lap("bundle for the node")
    assert torch_wheels(node_wh) == []
    core = core_mb(res.stdout)
    assert core < 60, res.stdout
    assert "the node's accelerate 1.0.0 does not meet" in res.stdout and list(node_wh.glob("accelerate-*.whl"))
    assert not list(node_wh.glob("pyarrow-*.whl")) and not list(node_wh.glob("transformers-*.whl"))

    # 4. medsft from it, with no index and no other source, then a real 4-bit training run from that venv
    #    (run outside the checkout, so the installed medsft is the one imported).
    check(subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--find-links", node_wh, "medsft"],
                         env=offline_pip_env(), capture_output=True, text=True, timeout=900), "pip install medsft")
    lap("install medsft (offline)")
    run_dir, home = tmp_path / "run", tmp_path / "home"
    env = {**offline_pip_env(), "MEDSFT_HOME": str(home), "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    res = subprocess.run([py, "-m", "medsft", "train", REPO / "recipes" / "tiny-cpu.yaml",
                          "--set", "training.max_steps=3", "--set", "training.eval_strategy=no",
                          "--set", f"output.dir={run_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    lap("train 3 steps")
    check(res, "medsft train")
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    origin = subprocess.run([py, "-c", "import medsft; print(medsft.__file__)"], cwd=tmp_path, env=env,
                            capture_output=True, text=True).stdout
    assert str(venv) in origin, origin
    print(f"node wheelhouse core {core} MB; timings (s): {clock}")


@pytest.mark.slow
def test_gpu_node_wheelhouse_is_under_60mb_with_a_cuda13_bitsandbytes(tmp_path):
    """The real target (CPython 3.12, manylinux x86_64) less what the lent GPU nodes hold: under the 60 MB core
    budget because bitsandbytes keeps only its CPU and CUDA 13 libraries; that wheel is sound, installs with
    pip, imports here (CPU library) and gives a torch built for CUDA 13.0 its cuda130 library."""
    need_pypi()
    wh = tmp_path / "wheelhouse"
    res = bundle("--present", f"@{NODE_PACKAGES}", wh)
    assert res.returncode == 0, res.stdout + res.stderr
    core = core_mb(res.stdout)
    assert core < 60, res.stdout
    assert "the node's transformers 5.17.0 does not meet >=5.24" in res.stdout
    names = {dist_name(p.name.split("-")[0]) for p in wh.glob("*.whl")}
    # peft and rich: the node's versions were never read, so they travel (launch/gpu-node-packages.txt)
    assert {"transformers", "bitsandbytes", "trl", "datasets", "pydantic", "medsft", "peft", "rich"} <= names, names
    assert not names & {"pyarrow", "numpy", "pandas", "accelerate", "tokenizers"}, names
    assert torch_wheels(wh) == []
    assert off_the_lock(wh) == [], "the wheelhouse left the tested set"

    (bnb,) = wh.glob("bitsandbytes-*-manylinux*_x86_64.whl")  # the published file name, so pip takes it
    match = re.search(r"dropped (.*): ([0-9.]+) MB -> ([0-9.]+) MB$", res.stdout, re.M)
    assert match and "rocm" in match[1] and "cuda128" in match[1] and "cuda13" not in match[1], res.stdout
    assert float(match[3]) < 10 < float(match[2]) and abs(float(match[3]) - bnb.stat().st_size / 1e6) < 0.1
    with zipfile.ZipFile(bnb) as z:
        libs = sorted(n.split("/")[-1] for n in z.namelist() if re.search(r"/libbitsandbytes_[^/]+\.so$", n))
    assert libs == ["libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so"]
    assert record_problems(bnb) == []

    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target", site,
                          bnb], env=offline_pip_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    probe = (
        "import bitsandbytes, bitsandbytes.cextension as c\n"
        "from bitsandbytes.cuda_specs import CUDASpecs\n"
        "print(bitsandbytes.__file__)\n"
        "print(type(c.lib).__name__, c.lib._lib._name.rsplit('/', 1)[-1])\n"
        "for v in ((13, 0), (13, 1), (13, 2), (13, 3)):\n"
        "    print(c.get_cuda_bnb_library_path(CUDASpecs((9, 0), f'{v[0]}{v[1]}', v)).name)\n"
        "print(c.get_cuda_bnb_library_path(CUDASpecs((9, 0), '128', (12, 8))).exists())\n"
    )
    env = {**offline_pip_env(), "PYTHONPATH": str(site)}
    env.pop("BNB_CUDA_VERSION", None)
    res = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    origin, loaded, *picked, cuda12 = res.stdout.splitlines()
    assert origin.startswith(str(site)), origin
    assert loaded == "BNBNativeLibrary libbitsandbytes_cpu.so"  # the CPU library, on this machine
    assert picked == ["libbitsandbytes_cuda130.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so",
                      "libbitsandbytes_cuda132.so"]
    assert cuda12 == "False"  # a CUDA 12 torch finds nothing: it needs --cuda 12.x
    print(f"GPU-node wheelhouse core {core} MB; bitsandbytes {match[2]} -> {match[3]} MB")
