#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool), after benchmarks/gpu_prepare.sh here, carrying .gpu:
#     device run --carry .gpu --timeout_s 560 --command "bash benchmarks/run_gpu.sh step"
# The next checks for issue 16 (benchmarks/RESULTS.md, "On a GPU, second session"), one device call each, the
# first one first (run the second only while device time is left):
#   bash benchmarks/run_gpu.sh step       (about 7 minutes)
#   bash benchmarks/run_gpu.sh attention  (about 6 minutes; each process writes its file, "off" runs last)
# step: every length-aware step timed on the GPU so far had its layers scanned (`4+scan`, `4+scan+plan`),
#   and the padded step it lost to did not: a scan is a while loop, whose predicate XLA's GPU backend may read
#   back to the host every layer (not checked here). MiniLM's shape (batch 32, k 10, bank 8096, 128/256, bf16), each
#   step in its own process: padded, padded with scanned layers, length plans unscanned.
# attention: on MiniLM's shape our padded step ran only 1.16x the authors' PyTorch step (0.084 s against
#   0.098 s), at 11.5% real-token MFU where the CodeT5+ shape's ran at 32.9%. The suspect is attention:
#   MiniLM's [rows, 12, L, L] scores are as large as CodeT5+'s for a quarter of the matmul work. One encode
#   call of the step's size (352 real code rows at the 256 cap, forward + backward, bf16), in three
#   processes: every dropout on, attention dropout off, no dropout; ours as one call, as the step runs it (a
#   dropout key per row), and that with attention's custom VJP (`model.attention_probs` "float32" and
#   "compute": only the probabilities and the dropout mask kept, 5 and 3 bytes per element where autodiff
#   keeps 9-11), against PyTorch (its attention kernel is printed first).
# Writes $OUT/train_step_lengths_gpu_minilm_scan.json or $OUT/encoder_grad_gpu_minilm_{on,hidden,off}.json,
# and $OUT/log_step or $OUT/log_attention. Each result file is written as soon as its process (or child process) ends, so a call cut
# short keeps what it finished.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-step}
case $what in step|attention) ;; *) echo "usage: run_gpu.sh [step|attention]"; exit 2;; esac
OUT=${OUT:-benchmarks/results}
ls .gpu/whl/*.whl .gpu/minilm-tokenizer/tokenizer.json .gpu/minilm-tokenizer/1_Pooling/config.json > /dev/null \
    || { echo "run benchmarks/gpu_prepare.sh first and carry .gpu"; exit 1; }
# The wheels are pure Python: importable from the zip files themselves (no pip needed there).
export PYTHONPATH=$(printf '%s:' "$PWD"/.gpu/whl/*.whl)$PWD PYTHONUNBUFFERED=1
export COCOHANERE_MINILM_DIR=$PWD/.gpu/minilm-tokenizer
# JAX on the GPU (the benchmark pins JAX to the CPU unless told), and without preallocating 75% of the GPU's
# memory: every child process also holds PyTorch, and the references need that memory.
export JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import jax, flax, torch, transformers; print('python', __import__('sys').version.split()[0], 'jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
  # Which attention kernel transformers gives the two references (BERT, and CodeT5+'s T5 encoder) here.
  python3 -c "import transformers as t; b = t.BertModel(t.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)); e = t.T5EncoderModel(t.T5Config(d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2)); print('attention: BERT', b.config._attn_implementation, 'T5', e.config._attn_implementation)"
  if [ "$what" = step ]; then
    python3 -m benchmarks.train_step --isolate --bank 8096 --dtype bfloat16 --rounds 3 --models minilm-shape \
        --sizes "minilm-shape=32,10,128,256" --length_buckets 0,0+scan,4+plan --reference_padding "" \
        --out "$OUT/train_step_lengths_gpu_minilm_scan.json"
    python3 -m benchmarks.lengths_table "$OUT/train_step_lengths_gpu_minilm_scan.json"
  else
    for dropout in ${DROPOUTS:-on hidden off}; do  # DROPOUTS="on off" when device time is short
      python3 -m benchmarks.encoder_grad --model minilm-shape --rows 352 --length 256 --rounds 5 --dtype bfloat16 \
          --dropout $dropout --only "ours one call,ours padded,ours padded [float32 probs],ours padded [compute probs],torch cap" --out "$OUT/encoder_grad_gpu_minilm_$dropout.json"
    done
  fi
} 2>&1 | tee "$OUT/log_$what"
