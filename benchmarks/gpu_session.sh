#!/usr/bin/env bash
# ONE GPU session: install from .whl/ (benchmarks/gpu_wheels.sh), run the GPU tests, then the real-size
# benchmark for each speed lever. Results go to ${OUT:-/tmp/gpu_out}. Budget: ~10 minutes on one H200.
#   PHASE=tests|bench|all (default all)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
PHASE=${PHASE:-all}
rm -rf /tmp/site /tmp/proj && mkdir -p /tmp/site /tmp/proj
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .whl/*.whl
fi
# mirror setup.cfg's package_dir mapping (mrgrpo.rewards = rewards, ...)
cp -r mrgrpo /tmp/proj/mrgrpo
for d in rewards policies reward_servers; do cp -r "$d" "/tmp/proj/mrgrpo/$d"; done
export PYTHONPATH=/tmp/proj:/tmp/site PYTHONSAFEPATH=1 HF_HUB_OFFLINE=1 MRGRPO_CACHE=/tmp/mrgrpo-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, diffusers, peft; print(torch.__version__, transformers.__version__, diffusers.__version__, peft.__version__)" | tee -a "$OUT/gpu.txt"

if [ "$PHASE" != bench ]; then
  timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/gpu tests/test_devices.py 2>&1 | tail -25 | tee "$OUT/test_gpu.txt"
  timeout 240 python3 -m pytest -q -p no:cacheprovider -n 8 tests/trainer tests/policies tests/test_sde.py \
    -k "not distributed and not deepspeed and not quickstart" 2>&1 | tail -15 | tee "$OUT/test_cuda_suite.txt"
fi
if [ "$PHASE" != tests ]; then
  B="python3 benchmarks/gpu_realsize.py --steps 3 --out $OUT/gpu_realsize.json"
  timeout 150 $B --gradient-checkpointing true --fused-optimizer false --label baseline 2>&1 | tail -3
  timeout 120 $B --gradient-checkpointing auto --fused-optimizer true --label gc_auto+fused 2>&1 | tail -3
  timeout 120 $B --gradient-checkpointing auto --fused-optimizer true --beta 0 --label gc_auto+fused+beta0 2>&1 | tail -3
  timeout 120 $B --gradient-checkpointing auto --fused-optimizer true --lora 64 --label lora64 2>&1 | tail -3
  timeout 200 $B --gradient-checkpointing auto --fused-optimizer true --compile --label gc_auto+fused+compile 2>&1 | tail -3
fi
