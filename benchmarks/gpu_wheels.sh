#!/usr/bin/env bash
# Download (on a networked machine) the wheels a bare GPU machine lacks into .whl/ (git-ignored, ~45 MiB),
# for machines with torch + transformers but no network. See docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
PYV=${PYV:-3.12}
python3 -m pip download --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  diffusers==0.42.1 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types typing-inspection typing_extensions \
  importlib_metadata zipp regex transformers==5.24.0 peft==0.21.2 open_clip_torch ftfy wcwidth
