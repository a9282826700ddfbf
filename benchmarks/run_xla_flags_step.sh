#!/usr/bin/env bash
# Do XLA:CPU's library backends speed up the CodeT5+ step on a host with AVX-512 (run_xla_flags.sh asked
# it of one MiniLM encode call on an AVX2 host)? The CodeT5+ configurations' step (layers scanned, packed
# rows in chunks of 2), batch 2, k 10, 128/256, bank of the encoder's own embeddings, under each XLA_FLAGS
# value, each in its own process (the flags are read when the backend starts), the default first and last.
# About 15 minutes on 2 cores; run with nothing else on the machine. Each run writes
# benchmarks/results/xla_step_flags_<name>.json (its machine.xla_flags names the flags); then
#   python -m benchmarks.xla_flags_table benchmarks/results/xla_step_flags_*.json
set -euo pipefail
cd "$(dirname "$0")/.."
R=benchmarks/results
run() {  # name, XLA_FLAGS
    XLA_FLAGS="$2" python -m benchmarks.train_step --models codet5p-110m --sizes "codet5p-110m=2,10,128,256" \
        --bank 512 --bank_fill model --rounds 2 --length_buckets 4+scan+pack+c2 --reference_padding= \
        --out "$R/xla_step_flags_$1.json"
}
run default ""
run onednn "--xla_cpu_use_onednn=true"
run ynn "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce"
run xnn_graph "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"
run default_again ""
