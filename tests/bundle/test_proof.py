"""bench/gpu_run.sh proof: the one GPU call, rehearsed on the CPU with --smoke through the same script and
steps as on the node (wheels installed with --target and put on PYTHONPATH, the requirement check, the
tests, every measured run): what it writes, how it stops on a requirement conflict, how the deadline skips."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # pip installs and whole-pipeline runs

SCRIPT = REPO / "bench" / "gpu_run.sh"
STEPS = ["requirements", "tests", "throughput", "attention", "notebook", "maxlen"]


def make_wheel(folder, name: str, version: str, requires=()) -> None:
    """A real (tiny, pure-Python) wheel pip installs: RECORD with every file's hash."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                 + "".join(f"Requires-Dist: {r}\n" for r in requires),
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: medsft-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{p},sha256={base64.urlsafe_b64encode(hashlib.sha256(t.encode()).digest()).rstrip(b'=').decode()},"
                     f"{len(t.encode())}\n" for p, t in files.items())
    files[f"{dist}/RECORD"] = record + f"{dist}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)


def proof(tmp_path, wheelhouse, *args, timeout=600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MEDSFT_BENCH_RESULTS", "MEDSFT_PROOF_START")}
    env.update(MEDSFT_WHEELHOUSE=str(wheelhouse), MEDSFT_SITE=str(tmp_path / "site"), PYTHON=sys.executable,
               MEDSFT_BENCH_MODELS=str(tmp_path / "models"), OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(SCRIPT), "proof", str(tmp_path / "out"), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_smoke_proof_installs_the_wheels_runs_every_step_and_writes_few_files(tmp_path, tiny_dir):
    wh = tmp_path / "wh"
    make_wheel(wh, "proofprobe", "1.0", ["packaging>=20", "pyyaml>=6"])
    res = proof(tmp_path, wh, "--smoke")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    out = tmp_path / "out"
    files = sorted(p.name for p in out.iterdir())
    assert files == ["freeze.txt", "gpu-tests.xml", "proof.json", "proof.log", "proof.md"]  # <= 8, few to fetch
    assert (tmp_path / "site" / "proofprobe" / "__init__.py").is_file()  # installed with --target, as on the node

    record = json.loads((out / "proof.json").read_text())
    assert list(record["steps"]) == STEPS
    assert {name: s["status"] for name, s in record["steps"].items()} == dict.fromkeys(STEPS, "ok"), record["steps"]
    assert all(s["seconds"] >= 0 for s in record["steps"].values())
    req = record["steps"]["requirements"]
    assert req["conflicts"] == [] and req["distributions_checked"] > 20
    freeze = (out / "freeze.txt").read_text()
    assert "\ntorch==" in freeze and "# carried" in freeze and "proofprobe" in freeze.split("# carried")[1]

    tests = record["steps"]["tests"]
    assert tests["pytest_exit"] == 0 and tests["tests"] > 0 and tests["failures"] == tests["errors"] == 0
    assert any("test_packed_batch_equals_separate" in c and r == "passed" for c, r in tests["cases"].items())

    (row,) = record["steps"]["throughput"]["rows"]
    assert row["tokens_per_second"] > 0 and len(row["losses"]) == row["steps"]
    # per shape: the FLOPs that ran (model ≤ hardware: the recompute), what MFU divides by, the attention
    assert 0 < row["model_flops_per_token"] < row["hardware_flops_per_token"] and row["head_positions"] == "all"
    assert row["peak_tflops"] > 0 and row["mfu"] is None
    assert row["attention_choice"]["implementation"] == "medsft_varlen"  # the varlen branch, on the reference kernel
    # the estimate is of the run that ran: its kernels and attention, not kernels off
    assert row["preflight"]["kernels"] == row["kernels"]
    assert row["preflight_gib"] > 0
    attention = record["steps"]["attention"]
    assert attention["chosen"] == row  # the chosen attention's step is step 2's run, not run twice
    assert attention["sdpa"]["requested_attention"] == "sdpa" and attention["sdpa"]["tokens_per_second"] > 0
    notebook = record["steps"]["notebook"]
    assert notebook["medsft"] == row and notebook["notebook"]["run"] == "notebook"
    assert notebook["medsft_over_notebook_tokens_per_second"] > 0
    maxlen = record["steps"]["maxlen"]
    assert maxlen["longest_max_length"] == 512 and maxlen["rows"][0]["fits"]
    md = (out / "proof.md").read_text()
    assert "## throughput" in md and "## longest max_length" in md
    log = (out / "proof.log").read_text()
    assert "== maxlen: ok" in log


def test_a_requirement_conflict_stops_the_proof_in_one_line(tmp_path):
    wh = tmp_path / "wh"
    make_wheel(wh, "proofprobe", "1.0", ["packaging<1"])
    res = proof(tmp_path, wh, "--smoke", timeout=300)
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
    from importlib.metadata import version

    # gpu_run.sh sends everything through `tee proof.log`: the line is in the output and in the log
    errors = [line for line in res.stdout.splitlines() if line.startswith("error:")]
    assert errors == [f"error: requirement check: packaging {version('packaging')} (node) does not meet packaging<1 "
                      "required by proofprobe 1.0 (carried) — carry a wheel that meets it "
                      "(launch/offline_bundle.sh --present @freeze.txt)"], res.stdout
    record = json.loads((tmp_path / "out" / "proof.json").read_text())
    assert record["steps"]["requirements"]["status"] == "stopped"
    assert record["steps"]["requirements"]["conflicts"] == [errors[0].split(": ", 2)[2].split(" — ")[0]]
    assert all(record["steps"][s] == {"status": "skipped", "reason": "stopped at requirements"} for s in STEPS[1:])
    assert (tmp_path / "out" / "freeze.txt").is_file()
    assert errors[0] in (tmp_path / "out" / "proof.log").read_text() and "Traceback" not in res.stdout


def test_the_deadline_skips_steps_with_the_reason(tmp_path):
    """A deadline already spent (the pip install counts): every step recorded as skipped, nothing trained."""
    wh = tmp_path / "wh"
    make_wheel(wh, "proofprobe", "1.0")
    res = proof(tmp_path, wh, "--smoke", "--deadline-s", "1", timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "proof.json").read_text())
    for name in STEPS:
        step = record["steps"][name]
        assert step["status"] == "skipped" and step["reason"].startswith("deadline: "), (name, step)
    assert not (tmp_path / "out" / "gpu-tests.xml").exists()


def test_proof_needs_a_results_folder(tmp_path):
    wh = tmp_path / "wh"
    make_wheel(wh, "proofprobe", "1.0")
    env = {**os.environ, "MEDSFT_WHEELHOUSE": str(wh)}
    for args in (["proof"], ["proof", "--smoke"]):
        res = subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and res.stderr.strip() == (
            "error: bench/gpu_run.sh proof OUT: name the results folder"), res.stderr


def test_random_weights_are_drawn_at_load_quantized_and_the_same_each_time(tmp_path, tiny_dir):
    """The proof's models: a folder with no weight file; from_pretrained draws the weights (seeded) and
    quantizes them in memory as it would a checkpoint."""
    code = f"""
import json, sys
sys.path.insert(0, {str(REPO / 'bench')!r})
import torch
from common import install_random_weights_loader, random_weights_dir
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
folder = random_weights_dir(json.loads(open({str(tiny_dir / 'config.json')!r}).read()), {str(tmp_path / 'm')!r})
install_random_weights_loader()
bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
a = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, quantization_config=bnb)
b = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, quantization_config=bnb)
ids = torch.tensor([[5, 6, 7, 8]])
print(json.dumps({{"files": sorted(p.name for p in folder.iterdir()),
                  "linear": type(a.model.layers[0].mlp.up_proj).__name__,
                  "same": bool(torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)),
                  "std": a(input_ids=ids).logits.std().item()}}))
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert not [f for f in out["files"] if f.endswith((".safetensors", ".bin"))], out["files"]
    assert out["linear"] == "Linear4bit" and out["same"] and out["std"] > 0
