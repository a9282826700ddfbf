#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool), after benchmarks/gpu_prepare.sh here, carrying .gpu:
#     device run --carry .gpu --timeout_s 600 --command "bash benchmarks/run_gpu.sh"
# Two checks for issue 16, each step in its own process (`--isolate`), bf16, real standard-library rows at the
# paper's caps 128/256, batch 32, k 10, bank 8096: step time, real-token MFU, peak GPU memory. The rows come
# from the device's own Python standard library (3.12 there, 3.11 here): record that beside the figures.
#  1. MiniLM's shape (random weights: the real ones do not travel; a step's time does not depend on their
#     values): our step as it runs on a GPU (padded) against both PyTorch references.
#  2. The CodeT5+ 110M shape: our padded step beside the length-aware chunks at 128 rows per chunk (large
#     calls, which a GPU needs; chunks of 8 ran 2.9x slower than padded on 2026-12-04).
# Writes $OUT/train_step_lengths_gpu_minilm.json, $OUT/train_step_lengths_gpu_chunk128.json and $OUT/log
# (copy them to benchmarks/results/ and `python -m benchmarks.lengths_table` them); about 7 minutes on an H200.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
ls .gpu/whl/*.whl .gpu/minilm-tokenizer/tokenizer.json .gpu/minilm-tokenizer/1_Pooling/config.json > /dev/null \
    || { echo "run benchmarks/gpu_prepare.sh first and carry .gpu"; exit 1; }
# The wheels are pure Python: importable from the zip files themselves (no pip needed there).
export PYTHONPATH=$(printf '%s:' "$PWD"/.gpu/whl/*.whl)$PWD PYTHONUNBUFFERED=1
export COCOHANERE_MINILM_DIR=$PWD/.gpu/minilm-tokenizer
# JAX on the GPU (the benchmark pins JAX to the CPU unless told), and without preallocating 75% of the GPU's
# memory: every child process also holds PyTorch, and the references need that memory.
export JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false
# 2026-12-04 (benchmarks/RESULTS.md, "On a GPU"): on the CodeT5+ shape our padded step beat both references
# (2.7x, 2.8x) and our length-aware chunks of 8 rows (and the length plans) lost to it, so off the CPU the
# step now runs padded by default. Each result file is written after every child process, so a run cut short
# keeps the children it finished.
common="--bank 8096 --dtype bfloat16 --rounds 3"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import jax, flax, torch, transformers; print('python', __import__('sys').version.split()[0], 'jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
  python3 -m benchmarks.train_step --isolate $common --models minilm-shape --sizes "minilm-shape=32,10,128,256" \
      --length_buckets 0 --reference_padding cap,longest --out "$OUT/train_step_lengths_gpu_minilm.json"
  python3 -m benchmarks.lengths_table "$OUT/train_step_lengths_gpu_minilm.json"
  python3 -m benchmarks.train_step --isolate $common --models codet5p-110m --sizes "codet5p-110m=32,10,128,256" \
      --length_buckets 0,4+scan --length_chunk 128 --reference_padding "" \
      --out "$OUT/train_step_lengths_gpu_chunk128.json"
  python3 -m benchmarks.lengths_table "$OUT/train_step_lengths_gpu_chunk128.json"
} 2>&1 | tee "$OUT/log"
