#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool), after benchmarks/gpu_prepare.sh here, carrying .gpu:
#     device run --carry .gpu --timeout_s 600 --command "bash benchmarks/run_gpu.sh"
# The paper's configuration (CodeT5+ 110M shape, batch 32, k 10, bank 8096, 128/256 tokens, bf16) on real
# standard-library rows, each step in its own process: step time, real-token MFU, peak GPU memory. The rows
# come from the device's own Python standard library (3.12 there, 3.11 here): record that beside the
# figures. Writes $OUT/train_step_lengths_gpu_chunk128.json (copy it to benchmarks/results/ and
# `python -m benchmarks.lengths_table` it) and $OUT/log; about 7 minutes on an H200.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
ls .gpu/whl/*.whl .gpu/minilm-tokenizer/tokenizer.json > /dev/null || { echo "run benchmarks/gpu_prepare.sh first and carry .gpu"; exit 1; }
# The wheels are pure Python: importable from the zip files themselves (no pip needed there).
export PYTHONPATH=$(printf '%s:' "$PWD"/.gpu/whl/*.whl)$PWD PYTHONUNBUFFERED=1
export COCOHANERE_MINILM_DIR=$PWD/.gpu/minilm-tokenizer
# JAX on the GPU (the benchmark pins JAX to the CPU unless told), and without preallocating 75% of the GPU's
# memory: every child process also holds PyTorch, and the references need that memory.
export JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false
# 2026-12-04 (benchmarks/RESULTS.md, "On a GPU"): our padded step beat both references and our length-aware
# chunks of 8 rows (and the length plans) lost to it, so off the CPU the step now runs padded by default.
# This run: the step as it runs on a GPU now (padded) against both references, beside the length-aware
# chunks at 128 rows per chunk (large calls, which a GPU needs; chunks of 8 ran 2.9x slower than padded).
# The result file is written after every child process, so a run cut short keeps the children it finished.
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import jax, flax, torch, transformers; print('python', __import__('sys').version.split()[0], 'jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
  python3 -m benchmarks.train_step --isolate --models codet5p-110m --sizes "codet5p-110m=32,10,128,256" \
      --bank 8096 --dtype bfloat16 --rounds 3 --length_buckets 0,4+scan --length_chunk 128 \
      --reference_padding cap,longest --out "$OUT/train_step_lengths_gpu_chunk128.json"
  python3 -m benchmarks.lengths_table "$OUT/train_step_lengths_gpu_chunk128.json"
} 2>&1 | tee "$OUT/log"
