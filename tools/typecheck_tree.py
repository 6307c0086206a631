"""Build ``build/typecheck/mrgrpo``: the installed package layout (setup.cfg's package_dir mapping) as
symlinks, so mypy sees ``mrgrpo.rewards`` etc. exactly as they are imported."""

from __future__ import annotations

import configparser
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(out: str = "build/typecheck") -> int:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    mapping = {}
    for line in cfg["options"]["package_dir"].strip().splitlines():
        name, _, folder = (part.strip() for part in line.partition("="))
        mapping[name] = ROOT / folder
    dest = ROOT / out
    shutil.rmtree(dest, ignore_errors=True)
    for name, folder in sorted(mapping.items()):
        target = dest.joinpath(*name.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for src in folder.glob("*.py"):
            (target / src.name).symlink_to(src)
    print(dest / "mrgrpo")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
