"""Print the packages whose installed version differs from the tested set (constraints.txt).

    python tools/versions_diff.py constraints.txt      (run with the venv's python)
"""

from __future__ import annotations

import re
import sys
from importlib import metadata


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(path: str) -> int:
    tested = {}
    for line in open(path, encoding="utf-8"):
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            tested[_key(name)] = version.strip()
    installed = {_key(d.metadata["Name"]): d.version.split("+")[0] for d in metadata.distributions()}
    rows = [(name, tested.get(name, "-"), version) for name, version in sorted(installed.items())
            if name not in ("avec", "pip", "setuptools", "wheel") and tested.get(name) != version]
    print(f"{len(rows)} package(s) differ from {path}:" if rows else f"every package is at its {path} version")
    for name, old, new in rows:
        print(f"  {name:<32} tested {old:<14} here {new}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "constraints.txt"))
