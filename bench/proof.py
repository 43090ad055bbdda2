"""The GPU proof in one call (bench/gpu_run.sh proof OUT): six steps under ONE deadline, each written to OUT
before the next starts, so a run cut off at any point still returns what it finished.

    0 requirements  pip freeze (freeze.txt) and a check that every requirement medsft reaches is met by the
                    package that imports (the carried wheels first, then the node's): one line on a conflict
    1 tests         tests/gpu: 4-bit QLoRA trains (loss falls, plain PEFT reloads the adapter) and packed =
                    separate for each attention medsft may pick (gpu-tests.xml)
    2 throughput    Qwen3-0.6B and Llama-3.1-8B shapes, 4-bit QLoRA at 2048 and 4096: tokens/s, TFLOP/s, MFU,
                    peak max_memory_allocated vs the preflight's estimate for the same run (kernels, attention)
    3 attention     the 8B step at the longest length under SDPA (row by row) vs step 2's chosen attention
    4 notebook      the notebook's settings (bench/notebook_baseline.py) on the 8B beside medsft's defaults
    5 maxlen        the longest 8B max_length that trains (doubling), with whatever time is left

OUT gets proof.json (every step: status ok | failed | skipped | stopped, its seconds, its rows or reason),
proof.md (the tables), freeze.txt, gpu-tests.xml; gpu_run.sh adds proof.log. Every training is a fresh process
(bench/gpu.py --run) killed at the time left; models are random weights drawn on the GPU at load
(common.random_weights_dir), nothing written. MFU divides by PEAK_TFLOPS (H100/H200 SXM dense bf16).
`--smoke`: the same steps on the CPU with the built-in tiny model's shapes and few steps (CI).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu  # noqa: E402  (bench/gpu.py: the child runner, one measured run, the notebook run)
from common import cell, describe_gpu, environment, random_weights_dir  # noqa: E402

REPO = gpu.REPO
PEAK_TFLOPS = 989.0  # H100 / H200 SXM, dense bf16 tensor cores (NVIDIA's datasheet, no sparsity)
STEPS = ("requirements", "tests", "throughput", "attention", "notebook", "maxlen")
GPU_TESTS = "test_single_gpu_qlora_trains or test_packed_batch_equals_separate"
# the CPU trains the QLoRA test's 16 steps too slowly for CI, and flex_attention (which medsft never picks on a CPU)
# costs a minute of inductor compilation there
SMOKE_TESTS = "test_packed_batch_equals_separate and not flex_attention"
# the most a step may take (seconds) when time is left; maxlen takes the rest
CAPS = {"requirements": 30, "tests": 150, "throughput": 200, "attention": 80, "notebook": 90, "maxlen": 10**6}


class ProofStop(Exception):
    """A step found something that makes every later step meaningless (one line, said once)."""


class Proof:
    def __init__(self, args):
        self.args, self.out, self.smoke = args, Path(args.out), args.smoke
        start = float(os.environ.get("MEDSFT_PROOF_START") or time.time())  # gpu_run.sh: before the pip install
        self.deadline = time.monotonic() + args.deadline_s - (time.time() - start)
        self.record = {"deadline_s": args.deadline_s, "smoke": self.smoke, "peak_tflops": None if self.smoke else
                       PEAK_TFLOPS, "peak_note": "MFU = achieved TFLOP/s / 989 (H100/H200 SXM dense bf16)",
                       "steps": {}}
        self.work = Path(args.work)
        self.bench = gpu.Bench(argparse.Namespace(smoke=self.smoke, phase_budget=0), self.work)
        self.bench.model = self.model  # random weights drawn at load: no build step, no files
        self.tables: list[tuple[str, list, list]] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def model(self, name: str) -> str:
        if self.smoke:
            from medsft.model.builtin.tiny_model import TINY_MODEL, builtin_model_dir

            config = json.loads((Path(builtin_model_dir(TINY_MODEL)) / "config.json").read_text())
        else:
            config = json.loads((gpu.CONFIGS / f"{name}.json").read_text())
        return str(random_weights_dir(config, self.work / "models" / name))

    def save(self) -> None:
        """proof.json and proof.md, each written whole and renamed: a kill leaves the previous version."""
        self.out.mkdir(parents=True, exist_ok=True)
        write(self.out / "proof.json", json.dumps(self.record, indent=2, default=str) + "\n")
        lines = [f"# GPU proof · {self.record.get('device', '?')}", ""]
        for title, columns, rows in self.tables:
            lines += [f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows] + [""]
        write(self.out / "proof.md", "\n".join(lines) + "\n")

    def step(self, name: str, function) -> None:
        budget = min(self.left(), CAPS[name])
        entry = self.record["steps"][name] = {"status": "running", "budget_s": round(budget)}
        if self.left() < (5 if name == "requirements" else 30):
            entry.update(status="skipped", reason=f"deadline: {max(self.left(), 0):.0f} s left of {self.args.deadline_s:.0f} s")
            print(f"== {name}: skipped ({entry['reason']})", flush=True)
            self.save()
            return
        self.save()
        print(f"== {name} ({budget:.0f} s)", flush=True)
        t0 = time.monotonic()
        self.bench.phase_start, self.bench.budget, self.bench.skipped = t0, budget, []
        try:
            entry.update(function(budget) or {})
            if entry["status"] == "running":
                entry["status"] = "ok"
        except ProofStop as stop:
            entry.update(status="stopped", reason=str(stop))
            raise
        except Exception as err:  # a step's failure is recorded; the next steps still run
            entry.update(status="failed", reason=f"{type(err).__name__}: {err}", traceback=traceback.format_exc()[-3000:])
            print(traceback.format_exc(), flush=True)
        finally:
            entry["seconds"] = round(time.monotonic() - t0, 1)
            if self.bench.skipped:
                entry["skipped_runs"] = self.bench.skipped
            self.save()
            print(f"== {name}: {entry['status']} in {entry['seconds']} s", flush=True)

    def table(self, title: str, columns: list, rows: list) -> None:
        self.tables.append((title, columns, rows))


def write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---------------------------------------------------------------- step 0: what is installed, and does it fit


def requirement_conflicts(site: Path | None) -> tuple[list[str], int]:
    """(conflicts, distributions checked): medsft's requirements (an extra's only where its package is there),
    every carried wheel's (SITE's dist-infos), and transitively those of every distribution they reach, each
    checked against the distribution that imports (the first on sys.path: the carried one over the node's)."""
    import tomllib
    from importlib import metadata

    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [(Requirement(r), "medsft", False) for r in project["dependencies"]]
    for extra, lines in project.get("optional-dependencies", {}).items():
        todo += [(Requirement(r), f"medsft[{extra}]", True) for r in lines]
    if site and site.is_dir():
        for dist in metadata.distributions(path=[str(site)]):
            todo += [(Requirement(r), f"{dist.metadata['Name']} {dist.version} (carried)", False)
                     for r in dist.requires or []]
    env, seen, conflicts, found = default_environment(), set(), [], {}
    while todo:
        req, who, optional = todo.pop()
        if req.marker is not None:
            extra = who.partition("[")[2].rstrip("]").split(" ")[0] if "[" in who else ""
            if not req.marker.evaluate({**env, "extra": extra}):
                continue
        name = canonicalize_name(req.name)
        try:
            dist = found.get(name) or metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if not optional:
                conflicts.append(f"{req.name} is not installed, required by {who} ({req})")
            continue
        found[name] = dist
        if req.specifier and not req.specifier.contains(dist.version, prereleases=True):
            where = getattr(dist, "_path", None)
            conflicts.append(f"{name} {dist.version} ({'carried' if site and where and str(where).startswith(str(site)) else 'node'}) "
                             f"does not meet {req} required by {who}")
        for extra in sorted(req.extras) or [""]:
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            todo += [(Requirement(r), f"{name}[{extra}]" if extra else f"{name} {dist.version}", False)
                     for r in dist.requires or []]
    return sorted(set(conflicts)), len(found)


def step_requirements(proof: Proof, budget: float) -> dict:
    site = Path(os.environ["MEDSFT_SITE"]) if os.environ.get("MEDSFT_SITE") else None
    plain = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    node = subprocess.run([sys.executable, "-m", "pip", "freeze"], env=plain, capture_output=True, text=True,
                          timeout=budget)
    text = f"# the node: {sys.executable} -m pip freeze\n{node.stdout}"
    if site and site.is_dir():
        carried = subprocess.run([sys.executable, "-m", "pip", "freeze", "--path", str(site)], env=plain,
                                 capture_output=True, text=True, timeout=budget)
        text += f"\n# carried (installed with --target into {site}, first on PYTHONPATH)\n{carried.stdout}"
    write(proof.out / "freeze.txt", text)
    t0 = time.monotonic()
    conflicts, checked = requirement_conflicts(site)
    result = {"distributions_checked": checked, "check_seconds": round(time.monotonic() - t0, 2),
              "conflicts": conflicts, "carried": str(site) if site else None}
    proof.record["steps"]["requirements"].update(result)
    if conflicts:
        more = f" (and {len(conflicts) - 1} more in proof.json)" if len(conflicts) > 1 else ""
        raise ProofStop(f"error: requirement check: {conflicts[0]}{more} — carry a wheel that meets it "
                        "(launch/offline_bundle.sh --present @freeze.txt)")
    print(f"requirements: {checked} distributions, no conflict ({result['check_seconds']} s)", flush=True)
    return result


# ---------------------------------------------------------------- step 1: the GPU tests


def step_tests(proof: Proof, budget: float) -> dict:
    scratch = proof.work / "tests-results"  # the tests' own JSON is folded into proof.json: few files back
    xml = proof.out / "gpu-tests.xml"
    env = {**os.environ, "MEDSFT_BENCH_RESULTS": str(scratch), "PYTHONUNBUFFERED": "1",
           "MEDSFT_BENCH_MODELS": str(proof.work / "test-models")}
    if proof.smoke:
        env["MEDSFT_GPU_TESTS_ON_CPU"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-q", "-rA", "-p", "no:cacheprovider",
           f"--junitxml={xml}", "-k", proof.args.tests_k, "-o", "addopts="]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
    try:
        code = proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = 124
    counts = junit_counts(xml)
    extra = {p.name: json.loads(p.read_text()) for p in sorted(scratch.glob("*.json"))} if scratch.is_dir() else {}
    status = "ok" if code == 0 and counts.get("tests") else "failed"
    reason = None if status == "ok" else (f"cut off at the step's {budget:.0f} s" if code == 124
                                          else f"pytest exit {code}")
    return {"status": status, **({"reason": reason} if reason else {}), "pytest_exit": code, "select": proof.args.tests_k,
            **counts, "results": extra}


def junit_counts(xml: Path) -> dict:
    import xml.etree.ElementTree as ET

    if not xml.is_file():
        return {}
    root = ET.parse(xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["cases"] = {f"{c.get('classname')}::{c.get('name')}": next((x.tag for x in c), "passed")
                       for c in suite.iter("testcase")}
    return counts


# ---------------------------------------------------------------- steps 2-5: measured runs (bench/gpu.py --run)


def mfu(row: dict) -> float | None:
    return row["tflops_per_second"] / PEAK_TFLOPS if row.get("tflops_per_second") else None


def step_throughput(proof: Proof, budget: float) -> dict:
    a, rows = proof.args, []
    for name in a.models:
        for length in a.lengths:
            row = proof.bench.medsft(name, length, a.steps)
            row["mfu"] = None if proof.smoke else mfu(row)
            row["peak_tflops"] = PEAK_TFLOPS  # what MFU divides by (the smoke's CPU has none: its MFU is None)
            rows.append(row)
            proof.record["steps"]["throughput"]["rows"] = rows
            proof.save()  # each run on disk before the next starts
    proof.table("throughput (4-bit QLoRA, packed bfd, micro-batch 1)",
                ["model", "max_length", "attention", "kernels", "tokens/s", "TFLOP/s", "MFU", "peak GiB",
                 "preflight GiB", "preflight/peak", "outcome"],
                [[r["model"], r["max_length"], attention_of(r), r.get("kernels"), r.get("tokens_per_second"),
                  r.get("tflops_per_second"), r.get("mfu"), r.get("peak_memory_gib"), r.get("preflight_gib"),
                  r.get("preflight_ratio"), gpu.outcome(r)] for r in rows])
    return {"rows": rows, **status_of(rows)}


def status_of(rows: list[dict]) -> dict:
    bad = [gpu.outcome(r) for r in rows if gpu.outcome(r) != "ok"]
    if not bad:
        return {"status": "ok"}
    return {"status": "ok" if len(bad) < len(rows) else "failed",
            "reason": f"{len(bad)} of {len(rows)} runs: {', '.join(sorted(set(bad)))}"}


def chosen_row(proof: Proof, name: str, length: int) -> dict | None:
    rows = proof.record["steps"].get("throughput", {}).get("rows", [])
    return next((r for r in rows if r["model"] == name and r["max_length"] == length and gpu.outcome(r) == "ok"),
                None)


def attention_of(row: dict) -> str | None:
    """What ran, as the manifest says: name (implementation) when they differ."""
    choice = row.get("attention_choice") or {}
    ran, impl = choice.get("ran") or row.get("attention"), choice.get("implementation")
    return f"{ran} ({impl})" if impl and impl != ran else ran


def step_attention(proof: Proof, budget: float) -> dict:
    a = proof.args
    name, length = a.models[-1], a.lengths[-1]
    chosen = chosen_row(proof, name, length) or proof.bench.medsft(name, length, a.steps)
    sdpa_rows = (chosen.get("attention_choice") or {}).get("implementation") == "medsft_sdpa_rows"
    if sdpa_rows and not proof.smoke:
        return {"status": "skipped", "chosen": chosen,
                "reason": f"the chosen attention is SDPA itself ({attention_of(chosen)}): nothing to compare"}
    sdpa = proof.bench.medsft(name, length, a.steps, attention="sdpa")
    speedup = (chosen["tokens_per_second"] / sdpa["tokens_per_second"]
               if chosen.get("tokens_per_second") and sdpa.get("tokens_per_second") else None)
    proof.table(f"attention: {name} at {length}", ["attention", "tokens/s", "s/step", "peak GiB", "speed-up"],
                [[attention_of(chosen), chosen.get("tokens_per_second"), chosen.get("step_seconds"),
                  chosen.get("peak_memory_gib"), speedup], [attention_of(sdpa), sdpa.get("tokens_per_second"),
                                                            sdpa.get("step_seconds"), sdpa.get("peak_memory_gib"), 1.0]])
    return {"model": name, "max_length": length, "chosen": chosen, "sdpa": sdpa,
            "speedup_tokens_per_second": speedup, **status_of([chosen, sdpa])}


def step_notebook(proof: Proof, budget: float) -> dict:
    a = proof.args
    name, length = a.models[-1], a.notebook_length
    ours = chosen_row(proof, name, length) or proof.bench.medsft(name, length, a.steps)
    theirs = proof.bench.notebook(name, length, a.notebook_steps)
    ratio = (ours["tokens_per_second"] / theirs["tokens_per_second"]
             if ours.get("tokens_per_second") and theirs.get("tokens_per_second") else None)
    proof.table(f"medsft defaults vs the notebook's settings: {name}",
                ["run", "attention", "batch", "tokens/step", "tokens/s", "peak GiB", "medsft/notebook"],
                [[r["run"], attention_of(r), r.get("micro_batch"), r.get("tokens_per_step"),
                  r.get("tokens_per_second"), r.get("peak_memory_gib"), ratio if r is ours else None]
                 for r in (ours, theirs)])
    return {"model": name, "medsft": ours, "notebook": theirs, "medsft_over_notebook_tokens_per_second": ratio,
            **status_of([ours, theirs])}


def step_maxlen(proof: Proof, budget: float) -> dict:
    a = proof.args
    b = proof.bench
    b.args.maxlen_model, b.args.maxlen_start, b.args.maxlen_limit = a.models[-1], a.maxlen_start, a.maxlen_limit
    b.args.maxlen_probes, b.args.maxlen_steps = a.maxlen_probes, a.maxlen_steps
    result = gpu.phase_maxlen(b)
    columns, table = result.pop("table")
    proof.table(f"longest max_length that trains: {a.models[-1]}", columns, table)
    fits = [r for r in result["rows"] if r.get("fits")]
    return {**result, "status": "ok" if fits else "failed",
            **({} if fits else {"reason": f"no probe trained ({result['stopped']})"})}


FUNCTIONS = {"requirements": step_requirements, "tests": step_tests, "throughput": step_throughput,
             "attention": step_attention, "notebook": step_notebook, "maxlen": step_maxlen}


class OneLineParser(argparse.ArgumentParser):
    """argparse's usage text is ten lines for one mistake: say the mistake and where the options are, exit 2."""

    def error(self, message):
        print(f"error: bench/proof.py: {message} — see `python bench/proof.py --help`", file=sys.stderr)
        raise SystemExit(2)


def parse(argv=None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("out", help="results folder (proof.json, proof.md, freeze.txt, gpu-tests.xml)")
    p.add_argument("--smoke", action="store_true", help="the same steps on the CPU: tiny shapes, few steps (CI)")
    p.add_argument("--deadline-s", type=float, default=450, help="for the whole proof, counted from "
                   "$MEDSFT_PROOF_START (gpu_run.sh sets it before the pip install); each step gets what is left")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per measured run (timed: 3..N)")
    p.add_argument("--models", nargs="*", default=["qwen3-0.6b", "llama3.1-8b"], help="medsft/memory/architectures names; "
                   "the last one is steps 3-5's")
    p.add_argument("--lengths", nargs="*", type=int, default=[2048, 4096])
    p.add_argument("--notebook-length", type=int, default=2048)
    p.add_argument("--notebook-steps", type=int, default=8)
    p.add_argument("--maxlen-start", type=int, default=8192)
    p.add_argument("--maxlen-limit", type=int, default=131072)
    p.add_argument("--maxlen-probes", type=int, default=5)
    p.add_argument("--maxlen-steps", type=int, default=2)
    p.add_argument("--tests-k", help=f"pytest -k for step 1 [{GPU_TESTS!r}; --smoke: {SMOKE_TESTS!r}]")
    p.add_argument("--only", nargs="*", choices=STEPS, help="run these steps only (the others: skipped)")
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--check", action="store_true", help="check the arguments and OUT, run nothing (gpu_run.sh, "
                   "before its pip install)")
    args = p.parse_args(argv)
    import math

    if not (math.isfinite(args.deadline_s) and args.deadline_s > 0):
        p.error(f"--deadline-s must be a positive number of seconds (got {args.deadline_s})")
    for name in ("steps", "notebook_length", "notebook_steps", "maxlen_probes", "maxlen_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"OUT {args.out!r} is a file: name a folder for the results")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.check:
        return 0
    args.tests_k = args.tests_k or (SMOKE_TESTS if args.smoke else GPU_TESTS)
    if args.smoke:  # the built-in tiny model's shapes on the CPU: every step's code path in about a minute
        args.models, args.lengths, args.steps, args.notebook_length, args.notebook_steps = ["tiny"], [256], 3, 256, 3
        args.maxlen_start, args.maxlen_limit, args.maxlen_probes, args.maxlen_steps = 512, 512, 1, 1
    import tempfile

    with tempfile.TemporaryDirectory(prefix="medsft-proof-") as tmp:
        args.work = args.work or tmp
        proof = Proof(args)
        described = proof.bench.child(["--describe"], "describe", 60)[1] or {"environment": environment(), "gpu": {}}
        proof.record.update(environment=described["environment"], gpu=described["gpu"],
                            device=describe_gpu(described["gpu"]))
        if not args.smoke and not (described["gpu"].get("device") or {}).get("name"):
            proof.save()
            print("error: no CUDA GPU seen by a child process — run the proof with --smoke on a CPU", file=sys.stderr)
            return 2
        print(f"device: {proof.record['device']}; deadline {args.deadline_s:.0f} s, {proof.left():.0f} s left",
              flush=True)
        for name in STEPS:
            if args.only and name not in args.only:
                proof.record["steps"][name] = {"status": "skipped", "reason": "not in --only"}
                continue
            try:
                proof.step(name, lambda budget, f=FUNCTIONS[name]: f(proof, budget))
            except ProofStop as stop:
                for later in STEPS[STEPS.index(name) + 1:]:
                    proof.record["steps"][later] = {"status": "skipped", "reason": f"stopped at {name}"}
                proof.save()
                print(stop, file=sys.stderr)
                return 2
        proof.record["seconds_left"] = round(proof.left())
        proof.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
