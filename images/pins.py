"""Prints the pinned requirement of a package from pyproject.toml's extras (one source of truth).

    python images/pins.py train torch          # torch==2.15.0
    python images/pins.py train torch +cpu     # torch==2.15.0+cpu (the CPU build's local version)

The image builds use it to install the CPU build of torch at exactly the version the project pins.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def pinned(extra: str, package: str, pyproject: Path = PYPROJECT) -> str:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = project.get("optional-dependencies", {}).get(extra)
    if requirements is None:
        raise SystemExit(f"pyproject.toml has no extra {extra!r}")
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*==\s*([A-Za-z0-9_.!+-]+)", requirement.strip())
        if match and match.group(1).lower().replace("_", "-") == package.lower().replace("_", "-"):
            return f"{match.group(1)}=={match.group(2)}"
    raise SystemExit(f"extra {extra!r} of pyproject.toml pins no {package!r} with '=='")


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    print(pinned(argv[0], argv[1]) + (argv[2] if len(argv) == 3 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
