"""bench/gpu_run.sh, the one command for an offline GPU machine, checked here with --dry-run: what it would
install (never torch) and run, and where everything goes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # pip installs and whole-pipeline runs

SCRIPT = REPO / "bench" / "gpu_run.sh"


def gpu_run(*args, wheelhouse, env=None) -> subprocess.CompletedProcess:
    # the caller's PYTHONPATH is not the test's: a test that wants one passes it in `env`
    full = {k: v for k, v in os.environ.items() if k not in ("MEDSFT_BENCH_RESULTS", "MEDSFT_BENCH_MODELS", "PYTHONPATH")}
    full.update(MEDSFT_WHEELHOUSE=str(wheelhouse), MEDSFT_SITE="/tmp/site-x", PYTHON="python3", **(env or {}))
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=REPO, env=full, capture_output=True, text=True,
                          timeout=60)


def wheelhouse(tmp_path, *names):
    folder = tmp_path / "wh"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_tests_dry_run(tmp_path):
    wh = wheelhouse(tmp_path, "trl-1.16.0-py3-none-any.whl", "medsft-0.1.0-py3-none-any.whl")
    res = gpu_run("--dry-run", "tests", tmp_path / "out", wheelhouse=wh, env={"MEDSFT_BENCH_RESULTS": "/elsewhere"})
    assert res.returncode == 0, res.stderr
    install, mkdir, command = res.stdout.splitlines()
    assert install.startswith("python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site-x ")
    assert f"{wh}/medsft-0.1.0-py3-none-any.whl" in install and f"{wh}/trl-1.16.0-py3-none-any.whl" in install
    out = tmp_path / "out"  # the argument wins over MEDSFT_BENCH_RESULTS
    assert mkdir == f"mkdir -p {out}"
    assert command == (f"PYTHONPATH={REPO}:/tmp/site-x MEDSFT_BENCH_RESULTS={out} "
                       "MEDSFT_BENCH_MODELS=/tmp/medsft-bench-models python3 -m pytest -m gpu tests/gpu -q -raP "
                       f"-p no:cacheprovider --junitxml={out}/gpu-tests.xml 2>&1 | tee {out}/gpu-tests.log")
    assert not out.exists()  # a dry run writes nothing
    res = gpu_run("--dry-run", "tests", out, wheelhouse=wh, env={"PYTHONPATH": "/already/there"})
    assert res.returncode == 0, res.stderr  # what was on PYTHONPATH stays, after the checkout and the wheels
    assert res.stdout.splitlines()[-1].startswith(f"PYTHONPATH={REPO}:/tmp/site-x:/already/there MEDSFT_BENCH_RESULTS=")


def test_proof_dry_run(tmp_path):
    wh = wheelhouse(tmp_path, "trl-1.16.0-py3-none-any.whl")
    out = tmp_path / "out"
    res = gpu_run("--dry-run", "proof", out, "--smoke", "--deadline-s", "300", wheelhouse=wh)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1].endswith(
        f"python3 bench/proof.py {out} --smoke --deadline-s 300 2>&1 | tee {out}/proof.log")


def test_bench_phase_dry_run_results_from_env(tmp_path):
    wh = wheelhouse(tmp_path, "trl-1.16.0-py3-none-any.whl")
    res = gpu_run("--dry-run", "maxlen", wheelhouse=wh, env={"MEDSFT_BENCH_RESULTS": str(tmp_path / "r"),
                                                               "MEDSFT_BENCH_MODELS": str(tmp_path / "m")})
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1].endswith(
        f"MEDSFT_BENCH_RESULTS={tmp_path}/r MEDSFT_BENCH_MODELS={tmp_path}/m python3 bench/gpu.py --phase maxlen "
        f"2>&1 | tee {tmp_path}/r/gpu-maxlen.log")


def test_phase_names_are_bench_gpu_phases(tmp_path):
    """Every phase the script accepts is one bench/gpu.py accepts (and the other way round), `all` included."""
    import re

    from tests.gpu.conftest import bench_gpu

    script = SCRIPT.read_text()
    accepted = set(re.search(r"^  throughput\|[^)]*\)", script, re.M).group(0).strip().rstrip(")").split("|"))
    assert accepted == {*bench_gpu().PHASES, "all"}
    wh = wheelhouse(tmp_path, "trl-1.16.0-py3-none-any.whl")
    for phase in sorted(accepted):
        res = gpu_run("--dry-run", phase, tmp_path / "out", wheelhouse=wh)
        assert res.returncode == 0, res.stderr
        assert f"bench/gpu.py --phase {phase} 2>&1 | tee {tmp_path}/out/gpu-{phase}.log" in res.stdout
    res = gpu_run("--dry-run", "tests", tmp_path / "out", "-k", "attention or memory", wheelhouse=wh)
    assert res.returncode == 0, res.stderr  # words after RESULTS go to the command
    assert "--junitxml=" + f"{tmp_path}/out/gpu-tests.xml -k attention or memory 2>&1" in res.stdout
    help_text = subprocess.run([sys.executable, "bench/gpu.py", "--help"], cwd=REPO, capture_output=True, text=True,
                               timeout=120).stdout
    assert "{throughput,memory,maxlen,notebook,all}" in help_text


def test_refuses_torch_wheels_and_unknown_commands(tmp_path):
    wh = wheelhouse(tmp_path, "trl-1.16.0-py3-none-any.whl", "nvidia_cublas-13.0-py3-none-manylinux_2_27_x86_64.whl")
    res = gpu_run("--dry-run", "tests", wheelhouse=wh)
    assert res.returncode == 2 and "torch's wheels are never installed" in res.stderr
    res = gpu_run("--dry-run", "tests", wheelhouse=tmp_path / "empty")
    assert res.returncode == 2 and "no wheels in" in res.stderr
    res = gpu_run("bogus", wheelhouse=wh)
    assert res.returncode == 2 and "bench/gpu_run.sh tests [RESULTS]" in res.stderr


def test_proof_mistakes_are_one_line_before_the_install(tmp_path):
    """A bad word after OUT, a bad --deadline-s or an OUT that is a file: one line and exit 2, said before the pip
    install (nothing is printed for it, even in a dry run)."""
    wh = wheelhouse(tmp_path, "trl-1.16.0-py3-none-any.whl")
    (tmp_path / "a-file").write_text("mine\n")
    for args, said in ((["--bogus"], "unrecognized arguments: --bogus"),
                       (["--deadline-s", "abc"], "--deadline-s: invalid float value: 'abc'"),
                       (["--deadline-s", "-5"], "--deadline-s must be a positive number"),
                       (["--deadline-s", "nan"], "--deadline-s must be a positive number")):
        res = gpu_run("--dry-run", "proof", tmp_path / "out", *args, wheelhouse=wh)
        assert res.returncode == 2 and res.stdout == "", (args, res.stdout, res.stderr)
        assert res.stderr.splitlines() == [next(iter(res.stderr.splitlines()))] and said in res.stderr, res.stderr
    res = gpu_run("--dry-run", "proof", tmp_path / "a-file", wheelhouse=wh)
    assert res.returncode == 2 and "is a file" in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr
    assert (tmp_path / "a-file").read_text() == "mine\n"
