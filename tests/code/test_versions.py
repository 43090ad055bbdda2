"""The tested set (medsft/constraints.txt, written by .ci/lock.py): it pins every dependency pyproject.toml names,
each pin within pyproject's range, and a run names every package whose installed version is not the tested one."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from packaging.requirements import Requirement

from medsft.versions import canonical, tested_versions, untested_versions
from tests.conftest import REPO


def requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + extras["test"] + extras["deepspeed"]]


def test_the_lock_pins_every_dependency_within_pyprojects_range():
    pins = tested_versions()
    for req in requirements():
        if req.name == "torch":  # the command line chooses its build (CPU here, CUDA on a GPU node)
            assert canonical(req.name) not in pins
            continue
        assert canonical(req.name) in pins, f"{req.name} is not in medsft/constraints.txt: run python .ci/lock.py"
        assert req.specifier.contains(pins[canonical(req.name)], prereleases=True), (req, pins[canonical(req.name)])


def test_a_version_other_than_the_tested_one_is_named_with_both():
    tested = tested_versions()["transformers"]
    assert untested_versions({"transformers": tested}) == {}
    assert untested_versions({"transformers": "0.0.1", "torch": "0.0.1"}) == {
        "transformers": {"installed": "0.0.1", "tested": tested}}


def test_lock_script_refuses_unknown_arguments():
    done = subprocess.run([sys.executable, str(REPO / ".ci" / "lock.py"), "--frobnicate"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "python .ci/lock.py" in done.stderr
