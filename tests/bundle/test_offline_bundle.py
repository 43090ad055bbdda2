"""launch/offline_bundle.sh: the wheelhouse for an air-gapped GPU node (everything but torch), and an
install from it with no index that trains. The slow test needs PyPI (CI has it); the others run anywhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import REPO

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

SCRIPT = REPO / "launch" / "offline_bundle.sh"
# What a GPU node's image already holds beside torch (see the README): installed in the test's "node" venv
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


def test_help_prints_usage():
    res = bundle("--help")
    assert res.returncode == 0, res.stderr
    assert "Wheelhouse for an air-gapped GPU node" in res.stdout
    for option in ("--python-version", "--glibc", "--host", "--extras", "--torch", "--present", "--max-core-mb",
                   "--print-requirements"):
        assert option in res.stdout
    assert "set -euo" not in res.stdout  # the header only


def test_unknown_option_is_one_line_and_exit_2():
    res = bundle("--frobnicate")
    assert res.returncode == 2 and res.stderr.strip() == "error: unknown option --frobnicate (see --help)"


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


def torch_wheels(folder) -> list[str]:
    names = [(p.name, dist_name(p.name.split("-")[0])) for p in folder.glob("*.whl")]
    return [f for f, n in names if n in ("torch", "triton") or n.startswith("nvidia")]


def core_mb(stdout: str) -> float:
    match = re.search(r"^core: ([0-9.]+) MB", stdout, re.M)
    assert match, stdout
    return float(match.group(1))


def offline_pip_env() -> dict:
    """No index, no pip configuration (this machine's adds local wheel folders): the wheelhouse alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "PYTHONPATH"}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.mark.slow
def test_wheelhouse_installs_offline_and_trains(tmp_path):
    reason = pypi_unreachable()
    if reason:
        pytest.skip(reason)
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
    assert (full / "requirements.txt").is_file() and list(full.glob("medsft-*.whl"))
    assert "pip install --no-index --find-links" in res.stdout and "--target DIR" in res.stdout
    names = {dist_name(p.name.split("-")[0]) for p in full.glob("*.whl")}
    assert {dist_name(r) for r in pyproject()["dependencies"]} - names == {"torch"}

    # 2. A "node": a fresh venv with the CPU torch on disk here (pip's configuration finds it), then the
    #    node's usual stack from that wheelhouse with no index.
    venv = tmp_path / "node"
    check(subprocess.run([sys.executable, "-m", "venv", venv], capture_output=True, text=True), "venv")
    py = str(venv / "bin" / "python")
    check(subprocess.run([py, "-m", "pip", "install", "-q", "torch==2.13.0"], capture_output=True, text=True,
                         timeout=900), "pip install torch")
    lap("venv + torch")
    check(subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--find-links", full, *NODE_STACK],
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
    assert core_mb(res.stdout) < 60, res.stdout
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
    print("timings (s):", clock)
