"""Run tests/compat on every torch from 2.10 to the newest release, each in a fresh virtual environment, and write
the results as JSON.

    python tests/compat/run_compat.py                       # every torch >= 2.10 the package index has
    python tests/compat/run_compat.py --versions 2.11.0     # the GPU node image's torch (CI runs this one)

Each environment gets that torch (the CPU build where the index has one, else the CUDA build with its NVIDIA
libraries, which import without a GPU) and the lock's versions of everything else the tests import
(medsft/constraints.txt); medsft itself is read from this checkout. The JSON lists, per torch: its version,
the signature of its `varlen_attn`, and every test's outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MIN = (2, 10)
TEST_DEPS = ["pytest", "numpy", "transformers"]


def available_versions() -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "torch"], capture_output=True, text=True,
                         check=True).stdout
    listed = re.search(r"Available versions: (.*)", out)
    versions = [v.strip() for v in listed.group(1).split(",")] if listed else []
    return sorted((v for v in versions if re.fullmatch(r"\d+\.\d+\.\d+", v) and tuple(map(int, v.split(".")[:2])) >= MIN),
                  key=lambda v: tuple(map(int, v.split("."))))


def constraints_without_torch(dest: Path) -> Path:
    lines = (REPO / "medsft" / "constraints.txt").read_text().splitlines()
    dest.write_text("\n".join(line for line in lines if not line.lower().startswith("torch")) + "\n")
    return dest


def run_one(version: str, work: Path) -> dict:
    env_dir = work / f"torch-{version}"
    python = env_dir / "bin" / "python"
    started = time.time()
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # a machine-wide pip constraint may cap torch at the releases it holds on disk: each version is asked for itself
    uncapped = {**os.environ, "PIP_CONSTRAINT": os.devnull}
    done = subprocess.run([*pip, f"torch=={version}"], env=uncapped, capture_output=True, text=True)
    if done.returncode == 0:
        done = subprocess.run([*pip, "-c", str(constraints_without_torch(work / "constraints.txt")), *TEST_DEPS],
                              env=uncapped, capture_output=True, text=True)
    if done.returncode != 0:
        why = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        return {"requested": version, "passed": False, "installed": False, "reason": " ".join(why)[-500:]}
    installed = time.time() - started
    probe = ("import inspect, torch; from torch.nn.attention.varlen import varlen_attn; "
             "print(torch.__version__); print(inspect.signature(varlen_attn))")
    facts = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True).stdout.splitlines()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", "tests/compat"],
                         cwd=REPO, env=env, capture_output=True, text=True)
    tests = {}
    for line in res.stdout.splitlines():
        m = re.match(r"^(PASSED|FAILED|ERROR|SKIPPED) (?:\[\d+\] )?(\S+)", line)
        if m:
            tests[m.group(2)] = m.group(1).lower()
    return {"requested": version, "torch": facts[0], "varlen_attn": facts[1], "returncode": res.returncode,
            "passed": res.returncode == 0 and "passed" in tests.values() and not {"failed", "error"} & set(tests.values()),
            "tests": tests, "install_seconds": round(installed, 1), "tail": res.stdout[-1500:] if res.returncode else ""}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--versions", nargs="*", help="torch versions (default: every one >= 2.10 on the index)")
    p.add_argument("--out", type=Path, default=REPO / "tests" / "compat" / "varlen-compat.json")
    args = p.parse_args(argv)
    versions = args.versions or available_versions()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for version in versions:
            print(f"torch {version} …", flush=True)
            results.append(run_one(version, Path(tmp)))
            print(f"torch {version}: {'passed' if results[-1]['passed'] else 'FAILED'} "
                  f"({len(results[-1]['tests'])} tests)", flush=True)
            subprocess.run(["rm", "-rf", str(Path(tmp) / f"torch-{version}")], check=False)
    import platform

    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
                                    "machine": platform.machine(), "results": results}, indent=2) + "\n")
    print(f"saved {args.out}")
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
