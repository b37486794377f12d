"""The version (app/core/version.py): pyproject's, answered by `/healthz` and `--version`; and
CHANGELOG.md keeps Keep a Changelog's shape."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from app.core.version import VERSION

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def test_the_version_is_pyprojects():
    # An editable install keeps the version it was installed with: scripts/test and
    # scripts/serve install again each time, so a bumped pyproject shows at once.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == VERSION


def test_python_m_app_version_prints_it_and_needs_no_settings(tmp_path):
    # --version reads no setting: it answers even where the server would refuse to start.
    run = subprocess.run(
        [sys.executable, "-m", "app", "--version"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "APP_ENV": "production"},
        timeout=60,
    )
    assert (run.returncode, run.stdout, run.stderr) == (0, f"streamchat {VERSION}\n", "")


def test_healthz_answers_the_version(client):
    answer = client.get("/healthz")
    assert answer.status_code == 200
    assert answer.json()["version"] == VERSION


def test_the_changelog_has_keep_a_changelogs_shape():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n")
    releases = re.findall(r"^## \[([^\]]+)\]", text, re.M)
    assert releases[0] == "Unreleased", "the newest section is [Unreleased]"
    for release in releases[1:]:
        assert re.fullmatch(r"\d+\.\d+\.\d+", release), release
    assert set(re.findall(r"^### (.+)$", text, re.M)) <= GROUPS
    # A released version is one pyproject has reached: never one ahead of it.
    for release in releases[1:]:
        released = tuple(map(int, release.split(".")))
        assert released <= tuple(map(int, VERSION.split("."))), release
