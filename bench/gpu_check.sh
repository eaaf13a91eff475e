#!/usr/bin/env bash
# The GPU column of the engine benchmark and the CUDA equality tests, in about 5 of the 8 minutes a GPU
# session allows (H100 or H200). From the repository root on a machine with CUDA:
#     bash bench/gpu_check.sh            # results into $OUT (the device tool's folder) or bench/results
# Needs torch, transformers, peft, pytest; not gradio, not the default model (random TinyLlama-shaped weights).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error GRADIO_ANALYTICS_ENABLED=False
out=${OUT:-bench/results}
mkdir -p "$out"
python3 -c "import torch, transformers, peft; assert torch.cuda.is_available(), 'no CUDA device';
print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"

# 1. Equality on CUDA with captured graphs (fp32), loads without recapture, bf16 smoke: about a minute.
timeout 180 python3 -m pytest -q -x -p no:cacheprovider tests/test_batched_cuda.py 2>&1 | tee "$out/gpu-tests.log"
tests=${PIPESTATUS[0]}

# 2. The GPU table: TinyLlama-1.1B shape, random bf16 weights, prompt 64, 128 new tokens,
#    8 adapters; sessions 1/4/8/16 x 2 columns (16 sessions = 32 rows). The reference (about 25 tok/s
#    per call on an H100) is timed up to 4 sessions to stay inside the time box.
timeout 330 python3 bench/bench_engine.py --random-weights tinyllama-1.1b --device cuda --prompt-tokens 64 \
    --max-new-tokens 128 --session-tokens 128 --rounds 1 --adapters 8 --sessions 1,4,8,16 \
    --reference-max-sessions 4 --repeats 2 --output "$out/engine-cuda-random-tinyllama-1.1b.json" \
    2>&1 | tee "$out/gpu-bench.log"
bench=${PIPESTATUS[0]}
echo "tests exit $tests, bench exit $bench"
exit $(( tests || bench ))
