"""Flax encoders vs Hugging Face PyTorch models: parity, real weights, export round trip, strict errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import cocohanere_jax
from cocohanere_jax.models import hf
from cocohanere_jax.models.encoder import length_buckets

import hf_models

ATOL = 1e-5


def _flax_embed(enc, ids, mask, deterministic=True, rng=None):
    rngs = {"dropout": rng} if rng is not None else {}
    return np.asarray(enc.module.apply({"params": enc.params}, jnp.asarray(ids), jnp.asarray(mask),
                                       deterministic=deterministic, rngs=rngs))


@pytest.fixture(scope="module")
def codet5p_dir(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("codet5p"))
    model = hf_models.save_codet5p(folder)
    return folder, model


@pytest.mark.parametrize("length", [7, 160])  # 160 > relative_attention_max_distance (128)
def test_codet5p_parity(codet5p_dir, length):
    folder, model = codet5p_dir
    enc = cocohanere_jax.load_encoder(folder)
    assert enc.family == "t5" and enc.config.embed_dim == 16 and enc.dim == 16
    ids, mask = hf_models.random_ids(6, length, 120, pad_id=0, seed=length, first_id=1)
    ref = hf_models.torch_embed(model, ids, mask, "codet5p")
    ours = _flax_embed(enc, ids, mask)
    np.testing.assert_allclose(ours, ref, atol=ATOL)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_t5_gated_gelu_and_small_max_distance(tmp_path):
    model = hf_models.save_codet5p(str(tmp_path), feed_forward_proj="gated-gelu",
                                   relative_attention_num_buckets=8, relative_attention_max_distance=12)
    enc = cocohanere_jax.load_encoder(str(tmp_path))
    ids, mask = hf_models.random_ids(4, 40, 120, pad_id=0, seed=3)
    np.testing.assert_allclose(_flax_embed(enc, ids, mask), hf_models.torch_embed(model, ids, mask, "codet5p"),
                               atol=ATOL)


@pytest.mark.parametrize("roberta", [False, True])
@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_bert_family_parity(tmp_path, roberta, pooling):
    model = hf_models.save_bert(str(tmp_path), roberta=roberta)
    enc = cocohanere_jax.load_encoder(str(tmp_path), pooling=pooling)
    pad = 1 if roberta else 0
    assert enc.pad_id == pad and enc.config.roberta_positions == roberta
    ids, mask = hf_models.random_ids(5, 64, 120, pad_id=pad, seed=int(roberta))
    ref = hf_models.torch_embed(model, ids, mask, pooling)
    np.testing.assert_allclose(_flax_embed(enc, ids, mask), ref, atol=ATOL)


def test_default_pooling_is_cls_without_sentence_transformers_config(tmp_path):
    hf_models.save_bert(str(tmp_path))
    assert cocohanere_jax.load_encoder(str(tmp_path)).config.pooling == "cls"


def test_dropout_only_in_training(codet5p_dir):
    enc = cocohanere_jax.load_encoder(codet5p_dir[0])
    ids, mask = hf_models.random_ids(3, 12, 120, pad_id=0)
    a = _flax_embed(enc, ids, mask, deterministic=False, rng=jax.random.PRNGKey(0))
    b = _flax_embed(enc, ids, mask, deterministic=False, rng=jax.random.PRNGKey(1))
    c = _flax_embed(enc, ids, mask)
    assert not np.allclose(a, b, atol=1e-4)
    np.testing.assert_array_equal(c, _flax_embed(enc, ids, mask))


def test_hash_dropout_masks_are_bernoulli():
    """The keyed-hash dropout masks (layers.keep_mask) behave like independent Bernoulli draws: keep rate,
    no correlation between neighbours, unrelated masks for distinct keys, raw key data = typed key, and the
    same mask under vmap as per call (so per-row keys keep the step independent of batching)."""
    from cocohanere_jax.models import layers

    keep = jax.jit(layers.keep_mask, static_argnums=(1, 2))
    m = np.asarray(keep(jax.random.key(0), (1000, 1000), 0.9))
    assert abs(m.mean() - 0.9) < 4 * np.sqrt(0.09 / m.size)
    x = m - 0.9
    assert abs((x[:, 1:] * x[:, :-1]).mean() / 0.09) < 0.01 and abs((x[1:] * x[:-1]).mean() / 0.09) < 0.01
    other = np.asarray(keep(jax.random.key(1), (1000, 1000), 0.9))
    assert abs((m == other).mean() - (0.9**2 + 0.1**2)) < 0.002
    raw = jax.random.key_data(jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(keep(raw, (1000, 1000), 0.9)), m)
    keys = jax.random.split(jax.random.key(3), 4)
    np.testing.assert_array_equal(np.asarray(jax.vmap(lambda k: layers.keep_mask(k, (5, 7), 0.7))(keys)),
                                  np.stack([np.asarray(layers.keep_mask(k, (5, 7), 0.7)) for k in keys]))
    drop = layers.Dropout(0.25)
    y = np.asarray(drop.apply({}, jnp.ones((64, 64)), deterministic=False, rngs={"dropout": jax.random.key(2)}))
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.75], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(drop.apply({}, jnp.ones((4, 4)), deterministic=True)), np.ones((4, 4)))


@pytest.fixture(scope="module")
def minilm():
    folder = hf_models.minilm_folder()
    return folder, transformers.AutoModel.from_pretrained(folder).eval(), transformers.AutoTokenizer.from_pretrained(folder)


TEXTS = [
    "Return the sum of two numbers.",
    "def add(a, b):\n    return a + b",
    "Parse a JSON document from a file path and return a dictionary of its fields, raising on invalid input.",
    "x",
    "public static int max(int[] values) { int m = values[0]; for (int v : values) m = Math.max(m, v); return m; }",
]


def test_minilm_real_weights(minilm):
    folder, model, tok = minilm
    enc = cocohanere_jax.load_encoder(folder)
    assert enc.config.pooling == "mean"  # from sentence-transformers' 1_Pooling/config.json
    ours = enc.encode(TEXTS, kind="code", batch_size=2, max_length=64)
    batch = tok(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="np")
    ref = hf_models.torch_embed(model, batch["input_ids"], batch["attention_mask"], "mean")
    assert ours.dtype == np.float32 and ours.shape == (5, 384)
    np.testing.assert_allclose(ours, ref, atol=ATOL)
    # Semantics survive: the docstring is nearest to its own code among these texts.
    sims = ours @ ours.T
    assert np.argmax(sims[0, 1:]) == 0


def test_tokenize_overrides_built_in_padding(minilm):
    enc = cocohanere_jax.load_encoder(minilm[0])
    ids = enc.tokenize(TEXTS, max_length=16)  # the folder's tokenizer.json pads to 128 by itself
    assert ids.shape == (5, 16) and ids.dtype == np.int32
    assert (ids[3, 3:] == enc.pad_id).all()
    with pytest.raises(TypeError, match="text #1"):
        enc.tokenize(["a", None], 8)
    with pytest.raises(ValueError, match="kind"):
        enc.encode(["a"], kind="docstring")


def test_encode_buckets_do_not_change_results_and_compile_once_per_bucket(minilm):
    enc = cocohanere_jax.load_encoder(minilm[0])
    texts = [f"function number {i} " + "word " * (i * 7 % 50) for i in range(23)]
    ids = enc.tokenize(texts, 128)
    mask = (ids != enc.pad_id).astype(np.int32)
    full = _flax_embed(enc, ids, mask)
    got = enc.embed_ids(ids, batch_size=8)
    np.testing.assert_allclose(got, full, atol=ATOL)
    used = {b for b in length_buckets(128)}
    assert enc._apply._cache_size() <= len(used)
    again = enc.embed_ids(ids, batch_size=8)
    np.testing.assert_array_equal(again, got)
    assert length_buckets(128) == (16, 24, 32, 48, 64, 96, 128)
    assert length_buckets(100) == (16, 24, 32, 48, 64, 96, 100) and length_buckets(90) == (16, 24, 32, 48, 64, 90)
    assert length_buckets(16) == (16,) and length_buckets(8) == (8,)


def test_codet5p_110m_sized_config(tmp_path):
    model = hf_models.save_codet5p(str(tmp_path), vocab_size=32103, d_model=768, d_kv=64, d_ff=3072,
                                   num_layers=12, num_heads=12, embed_dim=256)
    enc = cocohanere_jax.load_encoder(str(tmp_path))
    n_params = sum(x.size for x in jax.tree.leaves(enc.params))
    assert 109_000_000 < n_params < 111_000_000, n_params
    ids, mask = hf_models.random_ids(2, 24, 32103, pad_id=0, seed=5, first_id=1)
    ours = _flax_embed(enc, ids, mask)
    assert ours.shape == (2, 256)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(ours, hf_models.torch_embed(model, ids, mask, "codet5p"), atol=ATOL)


def test_export_round_trip_codet5p(codet5p_dir, tmp_path):
    folder, model = codet5p_dir
    enc = cocohanere_jax.load_encoder(folder)
    # Change the weights, as training would, so that the round trip cannot pass by copying files.
    params = jax.tree.map(lambda x: x * 1.01, enc.params)
    out = enc.with_params(params).export(str(tmp_path / "exported"))
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["model_type"] == "codet5p_embedding" and config["embed_dim"] == 16
    keys = set(load_file(os.path.join(out, "model.safetensors")))
    assert keys == set(load_file(os.path.join(folder, "model.safetensors")))
    ids, mask = hf_models.random_ids(4, 20, 120, pad_id=0, seed=9, first_id=1)
    reloaded_torch = transformers.AutoModel.from_pretrained(out, trust_remote_code=True).eval()
    ours = _flax_embed(enc.with_params(params), ids, mask)
    np.testing.assert_allclose(hf_models.torch_embed(reloaded_torch, ids, mask, "codet5p"), ours, atol=ATOL)
    np.testing.assert_allclose(_flax_embed(cocohanere_jax.load_encoder(out), ids, mask), ours, atol=1e-6)
    assert not np.allclose(ours, hf_models.torch_embed(model, ids, mask, "codet5p"), atol=1e-3)


def test_export_round_trip_minilm(minilm, tmp_path):
    folder, _, _ = minilm
    enc = cocohanere_jax.load_encoder(folder)
    out = enc.export(str(tmp_path / "minilm"))
    reloaded = transformers.AutoModel.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    batch = tok(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="np")
    ref = hf_models.torch_embed(reloaded, batch["input_ids"], batch["attention_mask"], "mean")
    np.testing.assert_allclose(enc.encode(TEXTS, max_length=64), ref, atol=ATOL)
    again = cocohanere_jax.load_encoder(out)
    assert again.config.pooling == "mean"
    np.testing.assert_allclose(again.encode(TEXTS, max_length=64), ref, atol=ATOL)
    # The unused pooler was carried through, so the original class loads every weight.
    assert "pooler.dense.weight" in load_file(os.path.join(out, "model.safetensors"))


def test_export_cli(codet5p_dir, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "cocohanere_jax.export", f"--model={codet5p_dir[0]}", f"--out={out}"],
                   check=True, capture_output=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert (out / "model.safetensors").exists() and (out / "modeling_codet5p_embedding.py").exists()


def _corrupt(folder, tmp_path, edit):
    state = load_file(os.path.join(folder, "model.safetensors"))
    edit(state)
    bad = tmp_path / "bad"
    bad.mkdir()
    save_file(state, str(bad / "model.safetensors"), metadata={"format": "pt"})
    for name in os.listdir(folder):
        if name != "model.safetensors" and os.path.isfile(os.path.join(folder, name)):
            with open(os.path.join(folder, name), "rb") as src, open(bad / name, "wb") as dst:
                dst.write(src.read())
    return str(bad)


KEY = "encoder.block.1.layer.0.SelfAttention.k.weight"


def test_missing_key_is_named(codet5p_dir, tmp_path):
    bad = _corrupt(codet5p_dir[0], tmp_path, lambda s: s.pop(KEY))
    with pytest.raises(hf.ConversionError, match=KEY.replace(".", r"\.")):
        cocohanere_jax.load_encoder(bad)


def test_unknown_key_is_named(codet5p_dir, tmp_path):
    bad = _corrupt(codet5p_dir[0], tmp_path, lambda s: s.__setitem__("encoder.adapter.weight", np.zeros(3, np.float32)))
    with pytest.raises(hf.ConversionError, match=r"encoder\.adapter\.weight"):
        cocohanere_jax.load_encoder(bad)


def test_wrong_shape_is_named(codet5p_dir, tmp_path):
    bad = _corrupt(codet5p_dir[0], tmp_path, lambda s: s.__setitem__(KEY, np.zeros((32, 31), np.float32)))
    with pytest.raises(hf.ConversionError, match=r"SelfAttention\.k\.weight.*\(32, 31\).*\(32, 32\)"):
        cocohanere_jax.load_encoder(bad)


def test_ignored_keys_are_explicit(tmp_path):
    # A BertForMaskedLM checkpoint: `bert.` prefix and an MLM head, both handled by explicit rules.
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=48, max_position_embeddings=40)
    mlm = transformers.BertForMaskedLM(cfg).eval()
    mlm.save_pretrained(str(tmp_path))
    enc = cocohanere_jax.load_encoder(str(tmp_path))
    ids, mask = hf_models.random_ids(3, 10, 120, pad_id=0)
    ref = hf_models.torch_embed(mlm.bert, ids, mask, "cls")
    np.testing.assert_allclose(_flax_embed(enc, ids, mask), ref, atol=ATOL)


def test_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        cocohanere_jax.load_encoder(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        cocohanere_jax.load_encoder(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        cocohanere_jax.load_encoder(str(tmp_path))


def test_pytorch_model_bin(tmp_path):
    model = hf_models.save_bert(str(tmp_path), roberta=True)
    os.remove(tmp_path / "model.safetensors")
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    enc = cocohanere_jax.load_encoder(str(tmp_path), pooling="mean")
    ids, mask = hf_models.random_ids(3, 10, 120, pad_id=1)
    np.testing.assert_allclose(_flax_embed(enc, ids, mask), hf_models.torch_embed(model, ids, mask, "mean"), atol=ATOL)


def test_bfloat16_compute_deviation(minilm):
    folder = minilm[0]
    f32 = cocohanere_jax.load_encoder(folder).encode(TEXTS, max_length=64)
    bf16_enc = cocohanere_jax.load_encoder(folder, dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf16_enc.params))
    bf16 = bf16_enc.encode(TEXTS, max_length=64)
    assert bf16.dtype == np.float32
    cos = np.sum(f32 * bf16, axis=1)
    # Documented in README: bf16 compute keeps cosine >= 0.999 to the float32 embedding on real weights.
    assert cos.min() > 0.999, cos
    assert np.abs(f32 - bf16).max() > 1e-6  # it really computed in bf16


@pytest.mark.parametrize("family", ["t5", "bert"])
def test_scanned_layers_equal_unrolled_and_export_the_same_tensors(codet5p_dir, tmp_path, family):
    """`scan_layers=True` (one nn.scan over stacked layer params) is the unrolled encoder: same forward and
    gradients (dropout off) against HF, the same HF tensors on export, and the export loads unrolled."""
    if family == "t5":
        folder, model = codet5p_dir
        pooling, ref_pooling = None, "codet5p"
    else:
        folder, pooling, ref_pooling = str(tmp_path / "bert"), "mean", "mean"
        model = hf_models.save_bert(folder)
    plain = cocohanere_jax.load_encoder(folder, pooling=pooling)
    scanned = cocohanere_jax.load_encoder(folder, pooling=pooling, scan_layers=True)
    stacked = "blocks" if family == "t5" else "layers"
    layers_n = plain.config.num_layers if family == "t5" else plain.config.num_hidden_layers
    assert stacked in scanned.params and not any(k.startswith(("block_", "layer_")) for k in scanned.params)
    assert all(v.shape[0] == layers_n for v in jax.tree.leaves(scanned.params[stacked]))
    ids, mask = hf_models.random_ids(4, 24, 120, pad_id=plain.pad_id, seed=5, first_id=1)
    ref = hf_models.torch_embed(model, ids, mask, ref_pooling)
    np.testing.assert_allclose(_flax_embed(scanned, ids, mask), ref, atol=ATOL)

    def loss(enc):
        return lambda p: jnp.sum(enc.module.apply({"params": p}, jnp.asarray(ids), jnp.asarray(mask))[:, :3])

    g_plain = hf.canonical_params(jax.grad(loss(plain))(plain.params), family)
    g_scan = hf.canonical_params(jax.grad(loss(scanned))(scanned.params), family)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5), g_plain, g_scan)
    # Dropout on: a key per layer, training-mode outputs differ from eval but stay finite and unit-norm.
    train = _flax_embed(scanned, ids, mask, deterministic=False, rng=jax.random.PRNGKey(3))
    assert np.all(np.isfinite(train)) and not np.allclose(train, ref, atol=1e-3)

    changed = jax.tree.map(lambda x: x * 1.01, scanned.params)
    a = hf.params_to_hf(changed, family, scanned.config)
    b = hf.params_to_hf(hf.canonical_params(changed, family), family, plain.config)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    out = scanned.with_params(changed).export(str(tmp_path / "exported"))
    np.testing.assert_allclose(_flax_embed(cocohanere_jax.load_encoder(out, pooling=pooling), ids, mask),
                               _flax_embed(scanned.with_params(changed), ids, mask), atol=1e-6)


def _attention_residuals(enc, ids, mask, key):
    """The dtypes of the [.., L, L]-shaped residuals the gradient of a training forward keeps."""
    import contextlib
    import io

    from jax.ad_checkpoint import print_saved_residuals

    def f(p):
        return jnp.sum(enc.module.apply({"params": p}, jnp.asarray(ids), jnp.asarray(mask), deterministic=False,
                                        rngs={"dropout": key}))

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(f, enc.params)
    length = ids.shape[1]
    return [line.split("[", 1)[0] for line in out.getvalue().splitlines()
            if f",{length},{length}]" in line.split(" ", 1)[0]]


def test_attention_core_is_softmax_dropout_and_values_with_their_gradients():
    """`layers.attention_core` (custom VJP: keeps the probabilities, recomputes the dropout mask) against
    plain autodiff of the composition it replaces: `Dropout`'s mask at `attention_index`, float32 values
    (to float32 rounding); with bfloat16 probabilities, to bfloat16 precision."""
    from cocohanere_jax.models import layers

    ks = jax.random.split(jax.random.PRNGKey(0), 3)
    logits = jax.random.normal(ks[0], (3, 2, 5, 7)) * 3.0
    vh = jax.random.normal(ks[1], (3, 2, 7, 4))
    g = jax.random.normal(ks[2], (3, 2, 5, 4))
    key = jax.random.key_data(jax.random.PRNGKey(9))

    def plain(lg, v, keep_prob):
        y = jax.nn.softmax(lg, axis=-1)
        if keep_prob < 1.0:
            keep = layers.keep_mask(key, y.shape, keep_prob, layers.attention_index(y.shape))
            y = jnp.where(keep, y / keep_prob, 0.0)
        return jnp.einsum("nhqk,nhkd->nhqd", y, v)

    for keep_prob in (1.0, 0.7):
        ref, ref_vjp = jax.vjp(lambda lg, v: plain(lg, v, keep_prob), logits, vh)
        out, vjp = jax.vjp(lambda lg, v: layers.attention_core(lg, v, key, keep_prob, jnp.float32), logits, vh)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
        for a, b in zip(vjp(g), ref_vjp(g)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        out16, vjp16 = jax.vjp(lambda lg, v: layers.attention_core(lg, v, key, keep_prob, jnp.bfloat16), logits, vh)
        np.testing.assert_allclose(out16, ref, atol=3e-2)
        for a, b in zip(vjp16(g), ref_vjp(g)):
            assert a.dtype == jnp.float32
            np.testing.assert_allclose(a, b, atol=6e-2)
        assert not np.allclose(out16, ref, atol=1e-6)  # it really kept bfloat16 probabilities
    with pytest.raises(ValueError, match="attention_probs='half' is not one of"):
        layers.check_attention_probs("half")


@pytest.mark.parametrize("family", ["t5", "bert"])
def test_attention_probs_kept_by_the_custom_vjp(codet5p_dir, tmp_path, family):
    """`load_encoder(attention_probs=...)`: "float32" (`layers.attention_core`) is the default autodiff
    encoder, dropout on (the same masks, so the same values; gradients to float rounding), keeping only the
    probabilities and the mask; "compute" is "float32" with float32 compute and, with bfloat16 compute,
    keeps bfloat16 probabilities (close, not equal). Nothing of it is exported."""
    if family == "t5":
        folder, pooling = codet5p_dir[0], None
    else:
        folder, pooling = str(tmp_path / "bert"), "mean"
        hf_models.save_bert(folder, attention_probs_dropout_prob=0.1, hidden_dropout_prob=0.1)
    ids, mask = hf_models.random_ids(4, 40, 120, pad_id=0, seed=2, first_id=1)
    key = jax.random.PRNGKey(7)

    def grad_of(enc):
        def loss(p):
            out = enc.module.apply({"params": p}, jnp.asarray(ids), jnp.asarray(mask), deterministic=False,
                                   rngs={"dropout": key})
            return jnp.sum(out[:, :3])
        return jax.value_and_grad(loss)(enc.params)

    def rel(g1, g2):
        num = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)))
        return num / sum(float(jnp.sum(a ** 2)) for a in jax.tree.leaves(g1))

    layers_n = None
    for dtype in (jnp.float32, jnp.bfloat16):
        auto, kept, compute = (cocohanere_jax.load_encoder(folder, pooling=pooling, dtype=dtype, **kw)
                               for kw in ({}, {"attention_probs": "float32"}, {"attention_probs": "compute"}))
        assert auto.config.attention_probs == "autodiff" and compute.config.attention_probs == "compute"
        (va, ga), (vk, gk), (vc, gc) = grad_of(auto), grad_of(kept), grad_of(compute)
        np.testing.assert_allclose(float(vk), float(va), rtol=1e-6)
        assert rel(ga, gk) < (1e-10 if dtype == jnp.float32 else 1e-4), rel(ga, gk)
        if dtype == jnp.float32:
            assert float(vc) == float(vk)
            jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), gk, gc)
        else:
            np.testing.assert_allclose(float(vc), float(vk), rtol=2e-2)
            assert 0 < rel(gk, gc) < 1e-3, rel(gk, gc)  # different (bf16 probabilities), and close
        # What the backward pass keeps of each layer's [rows, heads, 40, 40] attention arrays: the
        # probabilities (float32, or the compute dtype) and the dropout mask, never the dropped weights.
        layers_n = kept.config.num_layers if family == "t5" else kept.config.num_hidden_layers
        assert sorted(_attention_residuals(kept, ids, mask, key)) == sorted(["f32", "bool"] * layers_n)
        probs = "bf16" if dtype == jnp.bfloat16 else "f32"
        assert sorted(_attention_residuals(compute, ids, mask, key)) == sorted([probs, "bool"] * layers_n)
        assert len(_attention_residuals(auto, ids, mask, key)) > 2 * layers_n
    with pytest.raises(ValueError, match="attention_probs='fp16'"):
        cocohanere_jax.load_encoder(folder, pooling=pooling, attention_probs="fp16")
    out = compute.export(str(tmp_path / f"export_{family}"))
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        assert "attention_probs" not in json.load(f)
