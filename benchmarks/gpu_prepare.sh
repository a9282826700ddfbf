#!/usr/bin/env bash
# Run HERE (the CPU machine, with the package registries) before a GPU session's one device call (issue 16):
# puts into .gpu/ (git-ignored) what the GPU machine lacks for benchmarks/run_gpu.sh: the ml_collections
# wheel (the device image has jax, flax, optax, torch and transformers, not ml_collections) and the
# all-MiniLM-L6-v2 tokenizer's, config's and pooling's files (the benchmark tokenises real rows with it and
# builds the random-weight "minilm-shape" model from them; the weights stay here).
# Then: device run --carry .gpu --command "bash benchmarks/run_gpu.sh" (timeout 600).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .gpu && mkdir -p .gpu/whl .gpu/minilm-tokenizer
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .gpu/whl "ml_collections>=1.0"
minilm=$(python -c "import benchmarks.common as c; print(c.minilm_folder())")
cp "$minilm"/{tokenizer.json,tokenizer_config.json,special_tokens_map.json,vocab.txt,config.json} .gpu/minilm-tokenizer/
cp -r "$minilm"/1_Pooling .gpu/minilm-tokenizer/  # the "minilm-shape" model: MiniLM's config and pooling
du -sh .gpu
