#!/usr/bin/env bash
# The length-aware step against both PyTorch references on real token rows (issue 16), CPU.
# Each run writes benchmarks/results/train_step_lengths_*.json; `python -m benchmarks.lengths_table FILE`
# prints its table. About two hours on 2 cores; run on a machine with nothing else running.
set -euo pipefail
cd "$(dirname "$0")/.."
R=benchmarks/results
# MiniLM (real weights), the paper's caps, k = 10: length-aware unrolled and scanned, both references.
# (Batch 8 with our padded step as well needs more than this machine's 24 GB: the process was OOM-killed.)
python -m benchmarks.train_step --models minilm --sizes "minilm=4,10,128,256" --bank 512 --rounds 3 \
    --length_buckets 4,4+scan --reference_padding cap,longest --out $R/train_step_lengths_minilm_b4_k10_128_256.json
# The CodeT5+ 110M shape (random weights of its shape), the paper's caps: padded and length-aware (scanned).
python -m benchmarks.train_step --models codet5p-110m --sizes "codet5p-110m=4,2,128,256" --bank 512 --rounds 2 \
    --length_buckets 0,4+scan --reference_padding cap,longest --out $R/train_step_lengths_codet5p_b4_k2_128_256.json
# The CodeT5+ 110M shape at k = 10: every step in its own process (`--isolate`), so that each gets the
# machine's memory to itself (the cap-padded reference still outgrows 24 GB here and is reported as OOM-killed).
python -m benchmarks.train_step --isolate --models codet5p-110m --sizes "codet5p-110m=4,10,128,256" --bank 512 \
    --rounds 2 --length_buckets 4+scan,4 --reference_padding longest,cap --out $R/train_step_lengths_codet5p_b4_k10_128_256.json
# Batch 2: small enough for the cap-padded reference to fit beside nothing else.
python -m benchmarks.train_step --isolate --models codet5p-110m --sizes "codet5p-110m=2,10,128,256" --bank 512 \
    --rounds 2 --length_buckets 4+scan --reference_padding cap,longest --out $R/train_step_lengths_codet5p_b2_k10_128_256.json
# MiniLM at the issue's batch 16: ours fits in a few GB; each reference is OOM-killed on a 24 GB machine.
python -m benchmarks.train_step --isolate --models minilm --sizes "minilm=16,10,128,256" --bank 512 --rounds 2 \
    --length_buckets 4 --reference_padding longest,cap --out $R/train_step_lengths_minilm_b16_k10_128_256.json
# MiniLM at batch 8, each step isolated: both references fit (13-14 GB).
python -m benchmarks.train_step --isolate --models minilm --sizes "minilm=8,10,128,256" --bank 512 --rounds 2 \
    --length_buckets 4 --reference_padding longest,cap --out $R/train_step_lengths_minilm_b8_k10_128_256.json
# The same with length chunks of 4 rows (our step alone): is chunk fill what costs it at batch 2?
python -m benchmarks.train_step --isolate --models codet5p-110m --sizes "codet5p-110m=2,10,128,256" --bank 512 \
    --rounds 2 --length_buckets 4+scan --length_chunk 4 --reference_padding= \
    --out $R/train_step_lengths_codet5p_b2_k10_128_256_chunk4.json
# And our padded step alone at batch 2 (how much the length-aware step gains over it there).
python -m benchmarks.train_step --isolate --models codet5p-110m --sizes "codet5p-110m=2,10,128,256" --bank 512 \
    --rounds 2 --length_buckets 0 --reference_padding= --out $R/train_step_lengths_codet5p_b2_k10_128_256_padded.json
# One encode call alone, forward + backward (what the steps above spend their time on): our padded and
# length-aware encoders against PyTorch on the same rows, and the length-aware forward alone (the share
# of the custom VJP's second forward). Tables: printed, and in the JSON files.
python -m benchmarks.encoder_grad --model minilm --rows 48 --length 256 --rounds 3 --out $R/encoder_grad_minilm_r48_l256.json
python -m benchmarks.encoder_grad --model codet5p-110m --rows 16 --length 256 --rounds 3 --out $R/encoder_grad_codet5p_r16_l256.json
python -m benchmarks.encoder_grad --model codet5p-110m --rows 16 --length 256 --rounds 3 --buckets 8 \
    --only "ours padded,ours length-aware,ours length-aware fwd" --out $R/encoder_grad_codet5p_r16_l256_b8.json
# The optimizer update alone (clip + AdamW over every parameter), ours against PyTorch's.
python -m benchmarks.update_step --model codet5p-110m --rounds 5 --out $R/update_step_codet5p-110m.json
python -m benchmarks.update_step --model minilm --rounds 5 --out $R/update_step_minilm.json
# Length plans (step.length_plan) against the bucketed chunks: one encode call, then the step (paired per
# round, one process each), and finer buckets (8 per cap) for comparison.
PLAN_FNS="ours padded,ours length-aware,ours length plan,ours length-aware fwd"
python -m benchmarks.encoder_grad --model minilm --rows 48 --length 256 --rounds 3 --only "$PLAN_FNS" \
    --out $R/encoder_grad_minilm_r48_l256_plan.json
python -m benchmarks.encoder_grad --model codet5p-110m --rows 32 --length 256 --rounds 3 --only "$PLAN_FNS" \
    --out $R/encoder_grad_codet5p_r32_l256_plan.json
python -m benchmarks.train_step --models minilm --sizes "minilm=8,10,128,256" --bank 512 --rounds 3 \
    --length_buckets 4,4+plan --reference_padding= --out $R/train_step_lengths_minilm_b8_k10_128_256_plan.json
python -m benchmarks.train_step --models minilm --sizes "minilm=8,10,128,256" --bank 512 --rounds 3 \
    --length_buckets 4,8 --reference_padding= --out $R/train_step_lengths_minilm_b8_k10_128_256_buckets8.json
python -m benchmarks.train_step --models codet5p-110m --sizes "codet5p-110m=2,10,128,256" --bank 512 --rounds 3 \
    --length_buckets 4,4+plan --reference_padding= --out $R/train_step_lengths_codet5p_b2_k10_128_256_plan.json
python -m benchmarks.train_step --models codet5p-110m --sizes "codet5p-110m=2,10,128,256" --bank 512 --rounds 3 \
    --length_buckets 4+scan,4+scan+plan --reference_padding= \
    --out $R/train_step_lengths_codet5p_b2_k10_128_256_plan_scan.json
# A bank of the encoder's own embeddings (real neighbours) on the CodeT5+ shape: both references, chunks
# and plans, each step twice in mirrored order; chunks of 4 rows; the step's time per bucket and pass; and
# one encode call in chunks with and without recomputation (what the length-aware call's gain is made of).
python -m benchmarks.train_step --isolate --isolate_order mirror --models codet5p-110m \
    --sizes "codet5p-110m=2,10,128,256" --bank 512 --bank_fill model --rounds 4 \
    --length_buckets 4+scan,4+scan+plan --reference_padding cap,longest \
    --out $R/train_step_lengths_codet5p_b2_k10_128_256_model.json
python -m benchmarks.train_step --models codet5p-110m --sizes "codet5p-110m=2,10,128,256" --bank 512 \
    --bank_fill model --rounds 3 --length_chunk 4 --length_buckets 4+scan,8+scan --reference_padding= \
    --out $R/train_step_lengths_codet5p_b2_k10_128_256_model_chunk4.json
python -m benchmarks.step_profile --model codet5p-110m --size 2,10,128,256 --length_buckets 4+scan \
    --out $R/step_profile_codet5p_b2_k10_128_256.json
python -m benchmarks.encoder_grad --model minilm --rows 48 --length 256 --rounds 3 \
    --only "ours padded,ours padded chunks,ours padded remat chunks,ours length-aware,ours length-aware fwd,torch cap" \
    --out $R/encoder_grad_minilm_r48_l256_remat.json
python -m benchmarks.encoder_grad --model codet5p-110m --rows 32 --length 256 --rounds 3 \
    --only "ours length-aware,ours length-aware fwd,ours length plan,torch cap" \
    --out $R/encoder_grad_codet5p_r32_l256_chunks_plan.json
# Chunks of 4 against chunks of 8, paired in one process (a last "+cN" sets a step's chunk), in both orders
# on the CodeT5+ shape, and on MiniLM.
python -m benchmarks.train_step --models codet5p-110m --sizes "codet5p-110m=2,10,128,256" --bank 512 \
    --bank_fill model --rounds 3 --length_buckets 4+scan,4+scan+c4 --reference_padding= \
    --out $R/train_step_lengths_codet5p_b2_k10_128_256_model_chunks.json
python -m benchmarks.train_step --models codet5p-110m --sizes "codet5p-110m=2,10,128,256" --bank 512 \
    --bank_fill model --rounds 3 --length_buckets 4+scan+c4,4+scan --reference_padding= \
    --out $R/train_step_lengths_codet5p_b2_k10_128_256_model_chunks_reversed.json
python -m benchmarks.train_step --models minilm --sizes "minilm=8,10,128,256" --bank 512 --bank_fill model \
    --rounds 3 --length_buckets 4,4+c4 --reference_padding= \
    --out $R/train_step_lengths_minilm_b8_k10_128_256_model_chunks.json
# Packed rows (step.length_pack, "+pack") against the chunks: MiniLM against both references (mirrored),
# paired at 128/256 and at the default job's 32/64; the CodeT5+ shape with packed chunks of 4, 8, 1 and 2 rows.
python -m benchmarks.train_step --isolate --isolate_order mirror --models minilm \
    --sizes minilm=8,10,128,256 --bank 512 --bank_fill model --rounds 2 --length_buckets 4,4+pack \
    --reference_padding cap,longest --out $R/train_step_lengths_minilm_b8_k10_128_256_model_pack_isolated.json
python -m benchmarks.train_step --models minilm --sizes minilm=8,10,128,256 --bank 512 --bank_fill model \
    --rounds 3 --length_buckets 4,4+pack --reference_padding= \
    --out $R/train_step_lengths_minilm_b8_k10_128_256_model_pack.json
python -m benchmarks.train_step --models minilm --sizes minilm=16,2,32,64 --bank 512 --bank_fill model \
    --rounds 5 --length_buckets 4,4+pack --reference_padding= \
    --out $R/train_step_lengths_minilm_b16_k2_32_64_model_pack.json
python -m benchmarks.train_step --models codet5p-110m --sizes "codet5p-110m=2,10,128,256" --bank 512 \
    --bank_fill model --rounds 3 --length_buckets 4+scan+c4,4+scan+pack+c4,4+scan+pack --reference_padding= \
    --out $R/train_step_lengths_codet5p_b2_k10_128_256_model_pack.json
python -m benchmarks.train_step --models codet5p-110m --sizes "codet5p-110m=2,10,128,256" --bank 512 \
    --bank_fill model --rounds 3 --length_buckets 4+scan+c4,4+scan+pack+c1,4+scan+pack+c2 --reference_padding= \
    --out $R/train_step_lengths_codet5p_b2_k10_128_256_model_pack_small.json
python -m benchmarks.step_profile --model codet5p-110m --size 2,10,128,256 --length_buckets 4+scan+pack \
    --length_chunk 4 --out $R/step_profile_codet5p_b2_k10_128_256_pack_c4.json
python -m benchmarks.train_step --isolate --isolate_order mirror --models codet5p-110m \
    --sizes "codet5p-110m=2,10,128,256" --bank 512 --bank_fill model --rounds 2 \
    --length_buckets 4+scan+pack+c2 --reference_padding cap,longest \
    --out $R/train_step_lengths_codet5p_b2_k10_128_256_model_pack_isolated.json
python -m benchmarks.train_step --models minilm --sizes minilm=16,10,128,256 --bank 512 --bank_fill model \
    --rounds 2 --length_buckets 4,4+pack --reference_padding= \
    --out $R/train_step_lengths_minilm_b16_k10_128_256_model_pack.json
# Packed rows with kept activations (StepConfig.length_pack_keep, "+pack+keep") against the packed chunks,
# paired, on the CodeT5+ shape and MiniLM; the CodeT5+ step's profile with kept rows.
python -m benchmarks.train_step --models codet5p-110m --sizes "codet5p-110m=2,10,128,256" --bank 512 \
    --bank_fill model --rounds 2 --length_buckets 4+scan+pack+c2,4+scan+pack+keep+c2 --reference_padding= \
    --out $R/train_step_lengths_codet5p_b2_k10_128_256_model_pack_keep.json
python -m benchmarks.train_step --models minilm --sizes minilm=8,10,128,256 --bank 512 --bank_fill model \
    --rounds 3 --length_buckets 4+pack,4+pack+keep --reference_padding= \
    --out $R/train_step_lengths_minilm_b8_k10_128_256_model_pack_keep.json
python -m benchmarks.step_profile --model codet5p-110m --size 2,10,128,256 --length_buckets 4+scan+pack+keep \
    --length_chunk 2 --out $R/step_profile_codet5p_b2_k10_128_256_pack_keep_c2.json
