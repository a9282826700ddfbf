#!/usr/bin/env bash
# Do XLA:CPU's library backends (oneDNN, XNNPACK) speed up our encoder? One encode call of MiniLM, forward +
# backward of 48 real stdlib rows at the 256-token cap, padded and length-aware, under each XLA_FLAGS value,
# each in its own process (the flags are read when the backend starts). About 12 minutes on 2 cores; run on a
# machine with nothing else running. Each run writes benchmarks/results/xla_flags_<name>.json (its
# machine.xla_flags names the flags); `python -m benchmarks.xla_flags_table` prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
R=benchmarks/results
run() {  # name, XLA_FLAGS
    XLA_FLAGS="$2" python -m benchmarks.encoder_grad --model minilm --rows 48 --length 256 --rounds 2 \
        --only "ours padded,ours length-aware" --out "$R/xla_flags_$1.json"
}
run default ""
run onednn "--xla_cpu_use_onednn=true"
run xnnpack "--xla_cpu_use_xnnpack=true"
run xnn_fusion "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce"
run xnn_graph "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"
run default_again ""
