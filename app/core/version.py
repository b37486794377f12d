"""The version of this code: pyproject.toml's, read from the installed package's metadata.

One source, so `/healthz`, `python -m app --version` and the CHANGELOG's release headings cannot
disagree with what was packaged. Every way of running the server installs the package first
(scripts/serve, scripts/test, requirements.txt's `.` on Heroku), so the metadata is there.
"""

from __future__ import annotations

from importlib.metadata import version

VERSION = version("streamchat")
