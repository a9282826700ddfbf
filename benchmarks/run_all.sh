#!/usr/bin/env bash
# The full benchmark run behind RESULTS.md (CPU). Each script writes benchmarks/results/<name>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m benchmarks.search
python -m benchmarks.encode
python -m benchmarks.train_step                       # all cores (2 on the machine of RESULTS.md)
python -m benchmarks.train_step --threads 1 --out benchmarks/results/train_step_1thread.json
python -m benchmarks.train_step --models minilm --reencode_fraction 0.5,0.8 --out benchmarks/results/train_step_dedup.json
python -m benchmarks.growth
python -m benchmarks.plots
