"""The documentation site: its generated pages match their sources (README.md, the recipe schema), it builds
with `mkdocs build --strict` (no broken link or anchor), README.md stays a short front page that links every
page, and every page in docs/ is in the nav."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

DOCS = REPO / "docs"
README_LIMIT = 12_000
# The front page's two commands, which a newcomer copies as they are: set up and train, set up and test.
TWO_COMMANDS = [
    'python3 -m venv .venv && . .venv/bin/activate && pip install -c medsft/constraints.txt "torch==2.13.0" -e . '
    '&& medsft train recipes/tiny-cpu.yaml',
    "bash .ci/run",
]


def nav_pages() -> list[str]:
    """Every page mkdocs.yml's nav names, relative to docs/."""
    def walk(items):
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            if isinstance(value, list):
                yield from walk(value)
            elif not re.match(r"[a-z]+://", value):
                yield value
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))
    return list(walk(config["nav"]))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> subprocess.CompletedProcess:
    """One strict build per test session."""
    pytest.importorskip("mkdocs", reason="mkdocs is in the test extra: pip install -e '.[test]'")
    out = tmp_path_factory.mktemp("docs") / "site"
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                           "-d", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_generated_pages_are_current():
    res = subprocess.run([sys.executable, str(DOCS / "gen.py"), "--check"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_site_builds_strictly(site):
    assert site.returncode == 0, site.stdout + site.stderr
    assert "WARNING" not in site.stderr, site.stderr


def test_readme_is_a_short_front_page_linking_every_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme) <= README_LIMIT, f"README.md has {len(readme)} characters, over {README_LIMIT}"
    links = set(re.findall(r"\]\((docs/[^)#\s]+)", readme))
    missing = [page for page in nav_pages() if page != "index.md" and f"docs/{page}" not in links]
    assert not missing, f"README.md does not link these pages of the nav: {missing}"
    fenced = re.findall(r"^```bash\n(.*?)\n```$", readme, re.S | re.M)
    assert fenced[:2] == TWO_COMMANDS, f"README.md's two commands changed: {fenced[:2]}"


def test_every_page_is_in_the_nav():
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    nav = nav_pages()
    outside = [p for p in pages if p not in nav]
    assert not outside, f"pages in docs/ missing from mkdocs.yml's nav: {outside}"
    absent = [p for p in nav if p not in pages]
    assert not absent, f"mkdocs.yml's nav names pages that do not exist: {absent}"
