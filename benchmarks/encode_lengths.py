"""Length-aware vs padded encoding, forward + backward, on real rows: the measurement behind
`StepConfig.length_buckets` / `length_chunk` (issue 16).

48 real standard-library functions (code, 256-token cap) and their docstrings (queries, 128-token cap),
all-MiniLM-L6-v2 (real weights), dropout on, gradient of the sum of the embeddings w.r.t. the parameters:
`reencode.encode_rows` (every row at its cap) against `reencode.encode_pool` (one length-aware pool, 4
buckets per cap) at each chunk size given on the command line. Prints compile seconds and 3 timed rounds,
interleaved.

    python -m benchmarks.encode_lengths 4 8 16
"""
import time, sys, numpy as np, jax, jax.numpy as jnp
import cocohanere_jax
from benchmarks import common
from cocohanere_jax import reencode
from transformers import AutoTokenizer
import os, tempfile
enc = cocohanere_jax.load_encoder(common.model_folder("minilm", os.path.join(tempfile.gettempdir(), "cocohanere_bench_models")))
tok = AutoTokenizer.from_pretrained(common.minilm_folder())
pairs = common.stdlib_pairs()[:2000]
rng = np.random.default_rng(0)
sel = rng.choice(len(pairs), 48, replace=False)
c = common.token_rows(tok, [pairs[i][1] for i in sel], 256)
q = common.token_rows(tok, [pairs[i][0] for i in sel], 128)
print("real frac", (c != 0).mean(), (q != 0).mean(), flush=True)
apply_fn = reencode.as_apply_fn(enc.module)
ids = jnp.asarray(c); qids = jnp.asarray(q)
keys = reencode.row_keys(jax.random.key_data(jax.random.key(0)), 2, jnp.arange(96))
def make(mode, chunk):
    def f(p):
        if mode == "padded":
            a = reencode.encode_rows(apply_fn, p, ids, keys[:48], pad_id=0)
            b = reencode.encode_rows(apply_fn, p, qids, keys[48:], pad_id=0)
        else:
            (a, b), _ = reencode.encode_pool(apply_fn, p, [(ids, keys[:48]), (qids, keys[48:])], pad_id=0,
                                        buckets=reencode.bucket_lengths((128, 256), 4), chunk=chunk)
        return jnp.sum(a) + jnp.sum(b)
    return jax.jit(jax.grad(f))
variants = [("padded", 0)] + [("aware", int(x)) for x in sys.argv[1:]]
fns = {}
for m, ch in variants:
    t = time.perf_counter(); fn = make(m, ch).lower(enc.params).compile(); print(m, ch, "compile", round(time.perf_counter() - t, 1), flush=True)
    fns[(m, ch)] = fn
for r in range(3):
    for key, fn in fns.items():
        t = time.perf_counter(); jax.block_until_ready(fn(enc.params)); print(r, key, round(time.perf_counter() - t, 2), flush=True)
import os; print("load", os.getloadavg())
