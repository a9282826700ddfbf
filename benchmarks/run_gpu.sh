#!/usr/bin/env bash
# Run ON THE GPU MACHINE (device tool), after benchmarks/gpu_prepare.sh here, carrying .gpu:
#     device run --carry .gpu --timeout_s 560 --command "bash benchmarks/run_gpu.sh step"
# The next checks for issue 16 (benchmarks/RESULTS.md, "On a GPU, third session"), one device call each, the
# first one first (run the others only while device time is left):
#   bash benchmarks/run_gpu.sh step       (about 6 minutes: the plan's step compiled in 228 s last time)
#   bash benchmarks/run_gpu.sh encode     (about 2 minutes)
#   bash benchmarks/run_gpu.sh attention  (about 4 minutes; DROPOUTS="on off" picks its processes)
#   bash benchmarks/run_gpu.sh pack       (about 6 minutes)
# step: MiniLM's shape (batch 32, k 10, bank 8096, 128/256, bf16), padded against length plans unscanned with
#   chunks of 128 rows. Plans made for independent rows broke on 56% of the stdlib's real neighbour pools of
#   this size (320 + 320 rows), each miss running the pool padded in chunks of `length_chunk` rows (8: slow
#   on a GPU); the plans now expect runs of alike rows and a miss runs the bucketed chunks (of 128 rows
#   here). The banks start with the encoder's embeddings of their rows (`--bank_fill model`; random weights
#   here, and the 8096 bank rows repeat the device's stdlib pairs), so the miss rate here is not the
#   stdlib simulation's: `length_plan_misses_per_step` records it. Each step in its own process.
# encode: one apply over 352 rows ran 3.8x slower than the same rows vmapped (forward + backward, dropout
#   on; 3.4x without). Times both without dropout, forward only too, and dumps the optimized HLO of every
#   program named one_call / padded to $OUT/hlo (module numbers in compile order: the gradients' first,
#   then the forwards') for a diff here.
# attention: MiniLM's encode call with all, no-attention and no dropout, ours (autodiff, float32 and compute
#   probabilities) against PyTorch (measured in the third session; kept for a rerun).
# pack: MiniLM's shape as in step, padded against packed rows with kept activations (step.length_pack,
#   length_pack_keep: the pool's real tokens packed end to end, the rows it usually fills as one batch with
#   an ordinary backward pass, only the overflow in chunks of 64 packed rows): the length-aware path without
#   a loop in the common case, the one not yet measured on a GPU. Each step in its own process.
# Writes $OUT/train_step_lengths_gpu_minilm_plans.json, $OUT/train_step_lengths_gpu_minilm_pack_keep.json, $OUT/encoder_grad_gpu_minilm_encode.json (+ $OUT/hlo)
# or $OUT/encoder_grad_gpu_minilm_{on,hidden,off}.json, and $OUT/log_<check>. Each result file is written as
# soon as its process (or child process) ends, so a call cut short keeps what it finished.
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-step}
case $what in step|encode|attention|pack) ;; *) echo "usage: run_gpu.sh [step|encode|attention|pack]"; exit 2;; esac
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
        --sizes "minilm-shape=32,10,128,256" --length_buckets 0,4+plan --length_chunk 128 --reference_padding "" --bank_fill model \
        --out "$OUT/train_step_lengths_gpu_minilm_plans.json"
    python3 -m benchmarks.lengths_table "$OUT/train_step_lengths_gpu_minilm_plans.json"
  elif [ "$what" = pack ]; then
    python3 -m benchmarks.train_step --isolate --bank 8096 --dtype bfloat16 --rounds 3 --models minilm-shape \
        --sizes "minilm-shape=32,10,128,256" --length_buckets 0,4+pack+keep --length_chunk 64 --reference_padding "" \
        --bank_fill model --out "$OUT/train_step_lengths_gpu_minilm_pack_keep.json"
    python3 -m benchmarks.lengths_table "$OUT/train_step_lengths_gpu_minilm_pack_keep.json"
  elif [ "$what" = encode ]; then
    XLA_FLAGS="--xla_dump_to=$OUT/hlo --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*(one_call|padded).*" \
      python3 -m benchmarks.encoder_grad --model minilm-shape --rows 352 --length 256 --rounds 5 --dtype bfloat16 \
        --dropout off --only "ours one call,ours padded,ours one call fwd,ours padded fwd,torch cap" \
        --out "$OUT/encoder_grad_gpu_minilm_encode.json"
    # Keep the optimized programs only (the dump also holds every small jit's folder, LLVM IR and PTX).
    find "$OUT/hlo" -type f ! -name '*after_optimizations.txt' -delete; find "$OUT/hlo" -type d -empty -delete
    ls -la "$OUT/hlo"
  else
    for dropout in ${DROPOUTS:-on hidden off}; do  # DROPOUTS="on off" when device time is short
      python3 -m benchmarks.encoder_grad --model minilm-shape --rows 352 --length 256 --rounds 5 --dtype bfloat16 \
          --dropout $dropout --only "ours one call,ours padded,ours padded [float32 probs],ours padded [compute probs],torch cap" --out "$OUT/encoder_grad_gpu_minilm_$dropout.json"
    done
  fi
} 2>&1 | tee "$OUT/log_$what"
