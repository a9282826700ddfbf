#!/usr/bin/env bash
# The full benchmark run behind RESULTS.md (CPU). Each script writes benchmarks/results/<name>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/search.py
python benchmarks/encode.py
python benchmarks/train_step.py                       # all cores (2 on the machine of RESULTS.md)
python benchmarks/train_step.py --threads 1 --out benchmarks/results/train_step_1thread.json
python benchmarks/train_step.py --models minilm --reencode_fraction 0.5,0.8 --out benchmarks/results/train_step_dedup.json
python benchmarks/growth.py
python benchmarks/plots.py
