"""The tested set: resolve medsft's dependencies as a fresh install would today and write them as pip constraints.

    python .ci/lock.py            write medsft/constraints.txt (then run `bash .ci/run`; commit the lock if it passes)
    python .ci/lock.py --newest FILE
                                  write today's newest resolution to FILE and print how it differs from the lock
                                  (.ci/run installs FILE in a second environment and runs the quick suite there when it differs)

The resolution is pip's own (`pip install --dry-run --ignore-installed --report`), for this Python and platform,
with the extras CI installs. torch is left out: the command line chooses its build (CPU here, CUDA on a GPU node).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from medsft.versions import canonical, read_pins  # noqa: E402 — the one parser of the lock

LOCK = REPO / "medsft" / "constraints.txt"
TORCH = "torch==2.13.0"  # the CPU build CI and the README install
LEFT_OUT = {"medsft", "torch"}


def resolve() -> dict[str, str]:
    """`{name: version}` pip would install into an empty environment today, without any lock."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                        "--report", str(report), TORCH, f"{REPO}[test,deepspeed]"],
                       check=True, stderr=subprocess.DEVNULL)
        items = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"]: i["metadata"]["version"] for i in items
            if canonical(i["metadata"]["name"]) not in LEFT_OUT}


def write(path: Path, pins: dict[str, str], header: str) -> None:
    lines = [header] + [f"{name}=={pins[name]}" for name in sorted(pins, key=canonical)]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
    if argv and (argv[0] != "--newest" or len(argv) != 2):
        print(__doc__, file=sys.stderr)
        return 2
    pins = resolve()
    python = ".".join(map(str, sys.version_info[:3]))
    if not argv:
        write(LOCK, pins, f"# medsft's tested set: written by `python .ci/lock.py` on {time.strftime('%Y-%m-%d')} "
                          f"(Python {python}, {TORCH} CPU beside it).\n# Install with `pip install -c "
                          f"medsft/constraints.txt …` (README). pyproject.toml keeps the lower bounds.")
        print(f"wrote {LOCK.relative_to(REPO)}: {len(pins)} packages")
        return 0
    write(Path(argv[1]), pins, f"# newest releases on {time.strftime('%Y-%m-%d')} (Python {python})")
    locked = read_pins(LOCK.read_text())
    newest = {canonical(n): v for n, v in pins.items()}
    changed = [f"{n} {locked.get(n, '-')} -> {newest.get(n, '-')}" for n in sorted(set(locked) | set(newest))
               if locked.get(n) != newest.get(n)]
    print("newest releases differ from the lock: " + "; ".join(changed) if changed
          else "newest releases: the same as the lock")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
