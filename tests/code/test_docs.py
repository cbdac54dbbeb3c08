"""The manual: the README's links resolve, and the MkDocs site in docs/ builds under --strict (no broken link)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from imgclf.entry_points import PROJECT_ROOT

pytestmark = pytest.mark.duration(seconds=3)  # about, under make test: orders the modules


def test_readme_links_resolve_and_name_every_manual_page():
    readme = (PROJECT_ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    missing = [target for target in targets if not (PROJECT_ROOT / target).is_file()]
    assert missing == [], missing
    pages = {f"docs/{page.name}" for page in (PROJECT_ROOT / "docs").glob("*.md")} - {"docs/index.md"}
    assert pages - set(targets) == set(), "README's 'Where to go next' lacks these pages"


def test_the_manual_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is pinned in the dev extra: `make setup` installs it")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file()
