"""How quick medsft's quick commands are: each one's wall time as a ratio to `python -c "import torch"` on the same
machine (interleaved, fresh processes, median of N). A ratio well below 1 means the command does not pay for
torch at all.

    python bench/cli_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, save  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "import torch (the unit)": [sys.executable, "-c", "import torch"],
    "medsft --help": [sys.executable, "-m", "medsft", "--help"],
    "medsft train --help": [sys.executable, "-m", "medsft", "train", "--help"],
    "medsft eval --help": [sys.executable, "-m", "medsft", "eval", "--help"],
    "medsft env": [sys.executable, "-m", "medsft", "env"],
    "medsft preflight llama3.1-8b --gpu-memory 24GiB": [sys.executable, "-m", "medsft", "preflight",
                                                        str(REPO / "recipes" / "llama3.1-8b.yaml"), "--gpu-memory",
                                                        "24GiB"],
    "recipe error (medsft train, unknown key)": [sys.executable, "-m", "medsft", "train",
                                                 str(REPO / "recipes" / "tiny-cpu.yaml"), "--set",
                                                 "training.learning_rat=1"],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(args.runs):  # interleaved: a slower moment of the machine touches every command alike
        for name, cmd in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=300)
            times[name].append(time.perf_counter() - start)
    unit = median(times["import torch (the unit)"])
    rows = {name: {"median_s": round(median(t), 3), "min_s": round(min(t), 3), "max_s": round(max(t), 3),
                   "ratio_to_import_torch": round(median(t) / unit, 3)} for name, t in times.items()}
    width = max(map(len, rows))
    print(f"{'command':{width}}  median s  × import torch")
    for name, row in rows.items():
        print(f"{name:{width}}  {row['median_s']:8.3f}  {row['ratio_to_import_torch']:.2f}")
    save("cli-startup", {"runs": args.runs, "commands": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
