"""Smoke runs of the benchmark scripts (benchmarks/): each runs in its --smoke mode (tiny models, small
sizes) and writes well-formed JSON with positive timings. faiss and matplotlib are optional: without them
the scripts skip those parts and say so."""

import argparse
import importlib
import json
import math
import os

import pytest



def _script(name):
    return importlib.import_module(f"benchmarks.{name}")


def _timings(obj, key=""):
    """Every number under a key that names a timing (seconds, ms, rates)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _timings(v, k)
    elif isinstance(obj, list):
        for v in obj:
            yield from _timings(v, key)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and key.endswith(("_s", "_ms", "_per_s")):
        yield key, obj


def _check(path, payload, rows_key):
    with open(path, encoding="utf-8") as f:
        on_disk = json.load(f)
    assert on_disk["benchmark"] == payload["benchmark"] and on_disk["smoke"] is True
    machine = on_disk["machine"]
    assert machine["threads"] >= 1 and machine["jax"] and machine["date"] and len(machine["load_average_end"]) == 3
    rows = on_disk[rows_key]
    assert rows
    timings = list(_timings(rows))
    assert timings
    for key, value in timings:
        assert math.isfinite(value) and value > 0, (key, value)
    return on_disk


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("bench_models"))


def test_train_step_smoke(tmp_path, cache):
    out = str(tmp_path / "train_step.json")
    payload = _script("train_step").main(["--smoke", "--out", out, "--cache", cache])
    data = _check(out, payload, "results")
    for row in data["results"]:
        assert row["ratio_ours_over_reference"] > 0 and 0 < row["ours_mfu"] and row["compile_s"] > 0
        assert math.isfinite(row["loss_after"])
    assert data["matmul_peak"]["peak_gflops"] > 0


def test_train_step_smoke_bf16_with_dedup(tmp_path, cache):
    """The options of the GPU run (bf16 compute, banks filled with the encoder's embeddings) and of the
    de-duplicated re-encoding, on the tiny model."""
    out = str(tmp_path / "train_step_bf16.json")
    _script("train_step").main(["--smoke", "--dtype", "bfloat16", "--reencode_fraction", "0.5", "--out", out,
                                "--cache", cache, "--bank_fill", "model", "--length_buckets", "0,4+plan"])
    with open(out, encoding="utf-8") as f:
        data = json.load(f)
    assert data["matmul_peak"]["dtype"] == "bfloat16" and data["matmul_peak"]["peak_gflops"] > 0
    (row,) = data["results"]
    assert row["dtype"] == "bfloat16" and row["reencode_fraction"] == 0.5 and row["bank_fill"] == "model"
    assert math.isfinite(row["loss_after"]) and row["ratio_ours_over_reference"] > 0
    assert 0 < row["distinct_negatives"] <= 1 and row["dropped_negatives"] >= 0
    # The plans' misses of every step the length-aware step ran: the warm-up, each timed round, the check.
    misses = row["ours_b4_plan_length_plan_misses_per_step"]
    assert len(misses) == len(row["ours_b4_plan_times_s"]) + 2 and all(m in (0.0, 1.0, 2.0) for m in misses)
    assert misses[-1] == row["ours_b4_plan_length_plan_misses"]


def test_encode_smoke(tmp_path, cache):
    out = str(tmp_path / "encode.json")
    payload = _script("encode").main(["--smoke", "--out", out, "--cache", cache])
    data = _check(out, payload, "results")
    assert {r["kind"] for r in data["results"]} == {"query", "code"}
    for row in data["results"]:
        assert row["max_abs_diff_vs_reference"] < 1e-4  # same embeddings as transformers


def test_search_smoke(tmp_path):
    out = str(tmp_path / "search.json")
    payload = _script("search").main(["--smoke", "--out", out])
    data = _check(out, payload, "results")
    for row in data["results"]:
        assert row["ours_agreement_with_numpy"] == 1.0
        try:
            import faiss  # noqa: F401
        except ImportError:
            assert "faiss" in row["note"]
        else:
            assert row["faiss_ms"] > 0 and row["faiss_agreement_with_numpy"] == 1.0


def test_growth_smoke_and_plots(tmp_path, cache):
    out = str(tmp_path / "growth.json")
    payload = _script("growth").main(["--smoke", "--out", out, "--cache", cache])
    data = _check(out, payload, "k_sweep")
    assert [r["k"] for r in data["k_sweep"]] == data["config"]["ks"]
    assert [r["bank"] for r in data["bank_sweep"]] == data["config"]["banks"]
    _script("search").main(["--smoke", "--out", str(tmp_path / "search.json")])
    written = _script("plots").main(["--results", str(tmp_path), "--out", str(tmp_path / "png")])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert written == []
    else:
        assert sorted(os.path.basename(p) for p in written) == ["growth_bank.png", "growth_k.png", "search.png"]
        assert all(os.path.getsize(p) > 1000 for p in written)
    # RESULTS.md: the generated section is rebuilt from the JSON files, the hand-written text is kept.
    report = _script("report")
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmarks\n\nhand-written reading\n\n<!-- generated:start -->\nold\n<!-- generated:end -->\n\ntail\n")
    report.main(["--results", str(tmp_path), "--out", str(md)])
    text = md.read_text()
    assert "hand-written reading" in text and text.rstrip().endswith("tail") and "\nold\n" not in text
    search = json.loads((tmp_path / "search.json").read_text())
    for row in search["results"]:
        assert f"| {row['bank']:,} | {row['ours_ms']:.1f} |" in text
    for row in data["k_sweep"]:
        assert f"{row['ours_step_s']:.3g}" in text
    assert "Missing result files: train_step.json, train_step_1thread.json, train_step_dedup.json, train_step_gpu.json, encode.json" in text
    md.write_text("no markers")
    with pytest.raises(SystemExit, match="markers"):
        report.main(["--results", str(tmp_path), "--out", str(md)])


def test_length_variants_and_their_table_labels():
    ts, lt = _script("train_step"), _script("lengths_table")
    assert ts.parse_variant("4+scan") == (4, True, False) and ts.parse_variant(0) == (0, False, False)
    assert ts.parse_variant("4+scan+plan") == (4, True, True) == ts.parse_variant("4+plan+scan")
    assert ts.parse_variant("4+scan+plan+iid") == (4, True, "iid")  # plans for independent rows (the old default)
    # +cN: that step's own length chunk, beside the others in one process (paired rounds)
    assert ts.parse_variant("4+scan+c4") == (4, True, False) and ts.variant_chunk("4+scan+c4", 8) == 4
    assert ts.variant_chunk("4+scan", 8) == 8 and ts.implementation_label("--length_buckets", "4+c16") == "ours_b4_c16"
    assert lt.labels({"ours_b4_scan_c4_step_s": 1.0})[0] == ("ours_b4_scan_c4", "ours length-aware (4, layers scanned, chunks of 4 rows)")
    with pytest.raises(SystemExit, match="no length chunks"):
        ts.parse_variant("0+c4")
    # +pack: packed rows (StepConfig.length_pack), not with plans
    assert ts.parse_variant("4+scan+pack+c4") == (4, True, "pack")
    assert ts.implementation_label("--length_buckets", "4+scan+pack+c4") == "ours_b4_scan_pack_c4"
    assert lt.labels({"ours_b4_scan_pack_step_s": 1.0})[0] == ("ours_b4_scan_pack", "ours length-aware (4, layers scanned, packed rows)")
    # +keep after +pack: the fullest packed rows kept as one batch (StepConfig.length_pack_keep)
    assert ts.parse_variant("4+pack+keep+c2") == (4, False, "pack_keep")
    assert ts.implementation_label("--length_buckets", "4+pack+keep+c2") == "ours_b4_pack_keep_c2"
    assert lt.labels({"ours_b4_pack_keep_c2_step_s": 1.0})[0] == (
        "ours_b4_pack_keep_c2", "ours length-aware (4, packed rows, kept activations, chunks of 2 rows)")
    for bad in ("4+remat", "0+plan", "4+plan+plan", "4+iid", "0+pack", "4+plan+pack", "4+keep", "4+plan+keep"):
        with pytest.raises(SystemExit, match="N, N\\+scan"):
            ts.parse_variant(bad)
    assert ts.implementation_label("--length_buckets", "4+scan+plan") == "ours_b4_scan_plan"
    assert ts.implementation_label("--length_buckets", "4+scan+plan+iid") == "ours_b4_scan_plan_iid"
    assert lt.labels({"ours_b4_scan_plan_iid_step_s": 1.0})[0] == (
        "ours_b4_scan_plan_iid", "ours length-aware (4, layers scanned, length plans, planned for independent rows)")
    # Without a padded step (no ours_compile_s), "ours_*" is measure()'s alias of the first step: no row.
    row = {"ours_b4_step_s": 1.0, "ours_b4_scan_step_s": 1.0, "ours_b4_plan_step_s": 1.0, "ours_step_s": 1.0,
           "ours_b4_compile_s": 9.0}
    assert lt.labels(row) == [("ours_b4", "ours length-aware (4)"), ("ours_b4_plan", "ours length-aware (4, length plans)"),
                              ("ours_b4_scan", "ours length-aware (4, layers scanned)")] + lt.REFERENCES
    row["ours_compile_s"] = 3.0
    assert "ours" in [k for k, _ in lt.labels(row)]


def test_isolated_child_command_line_drops_the_parent_flags():
    ts = _script("train_step")
    argv = ["--isolate", "--models", "minilm", "--length_buckets", "0,4", "--reference_padding=cap,longest",
            "--out", "x.json", "--rounds=2", "--bank", "512"]
    assert ts.child_argv(argv) == ["--models", "minilm", "--bank", "512"]  # each child gets its own --rounds


def test_mirrored_isolation_runs_each_step_twice_and_pools_its_rounds(tmp_path):
    """--isolate_order mirror: A B C C B A with half the rounds each; a step's passes pool their rounds (the
    median of all), so a machine that slows down during the run weighs on every step alike."""
    ts, lt = _script("train_step"), _script("lengths_table")
    impls = ts.implementations("4", "cap,longest")
    assert ts.isolated_schedule(impls, 3, "forward") == [(f, v, 3) for f, v in impls]
    assert ts.isolated_schedule(impls, 3, "mirror") == [
        ("--length_buckets", "4", 2), ("--reference_padding", "cap", 2), ("--reference_padding", "longest", 2),
        ("--reference_padding", "longest", 1), ("--reference_padding", "cap", 1), ("--length_buckets", "4", 1)]
    with pytest.raises(ValueError, match="isolate_order"):
        ts.isolated_schedule(impls, 2, "random")
    assert "--rounds=2" not in ts.child_argv(["--isolate", "--isolate_order", "mirror", "--rounds=2", "--bank=8"])
    shared = dict(model="minilm", batch=8, k=10, lq=128, lc=256, bank=512, model_gflops_per_step=1.0,
                  real_token_gflops_per_step=0.5, reencode_fraction=None, dtype="float32", length_chunk=8,
                  real_token_fraction={"query": 0.15, "code": 0.56})

    def child(label, times, rss, peak):  # one pass: times in seconds; real MFU against this pass's peak
        step = sorted(times)[len(times) // 2]
        return {"label": label, "matmul_peak": {"xla_gflops": peak}, "results": [dict(
            shared, **{f"{label}_step_s": step, f"{label}_times_s": times, f"{label}_real_mfu": 0.5 / step / peak},
            process_max_rss_gb=rss)]}

    # The machine ran at 100 GFLOP/s, then at half that: our first pass fast, the references' second slow.
    passes = [child("ours_b4", [2.0], 3.0, 100.0), child("reference", [5.0], 15.0, 100.0),
              child("reference", [10.0], 14.0, 50.0), child("ours_b4", [4.0], 3.5, 50.0)]
    combined = ts.combine_passes(passes)
    assert [c["label"] for c in combined] == ["ours_b4", "reference"]
    ours = combined[0]["results"][0]
    assert ours["ours_b4_times_s"] == [2.0, 4.0] and ours["ours_b4_step_s"] == 3.0 and ours["passes"] == 2
    assert ours["process_max_rss_gb"] == 3.5 and ours["ours_b4_pairs_per_s"] == 8 / 3.0
    assert ours["ours_b4_real_mfu"] == pytest.approx(0.5 * (1 / 100 + 1 / 50) / 2 / 3.0)
    row = ts.merge_isolated([dict(c["results"][0], label=c["label"]) for c in combined])
    assert row["ratio_ours_b4_over_reference"] == 7.5 / 3.0  # forward order would have said 5.0 / 2.0 or 10 / 4
    # A step that failed in either pass is recorded as failed.
    failed = ts.combine_passes([child("ours_b4", [2.0], 3.0, 100.0), {"label": "reference", "failed": "exit status 1"},
                                child("reference", [10.0], 14.0, 50.0), child("ours_b4", [4.0], 3.5, 50.0)])
    assert failed[1] == {"label": "reference", "failed": "exit status 1"}
    path = tmp_path / "mirror.json"
    path.write_text(json.dumps({"machine": {}, "isolate_order": "mirror", "results": [row]}))
    assert "twice, in mirrored order A B C C B A" in lt.table(str(path))


def test_isolated_children_merge_into_one_row_and_table(tmp_path):
    """--isolate: one child per implementation; the merged row keeps each child's columns and peak memory,
    and its ratios are ratios of medians; lengths_table renders it with a peak-memory column."""
    ts, lt = _script("train_step"), _script("lengths_table")
    assert ts.implementations("0,4", "cap,longest") == [
        ("--length_buckets", "0"), ("--length_buckets", "4"),
        ("--reference_padding", "cap"), ("--reference_padding", "longest")]
    assert ts.implementations("4", "") == [("--length_buckets", "4")]
    shared = dict(model="minilm", batch=16, k=10, lq=128, lc=256, bank=512, model_gflops_per_step=1.0,
                  real_token_gflops_per_step=0.5, reencode_fraction=None, dtype="float32", length_chunk=8,
                  real_token_fraction={"query": 0.15, "code": 0.56})
    ours = dict(shared, ours_b4_step_s=2.0, ours_b4_times_s=[2.0, 2.1], ours_b4_real_mfu=0.2, ours_b4_compile_s=90.0,
                ours_step_s=2.0, ours_times_s=[2.0, 2.1], compile_s=90.0, loss_after=0.1, valid_negatives=10.0,
                process_max_rss_gb=3.0)
    padded = dict(shared, ours_step_s=4.0, ours_times_s=[4.0, 4.2], ours_real_mfu=0.1, ours_compile_s=30.0,
                  compile_s=30.0, process_max_rss_gb=5.0)
    cap = dict(shared, reference_step_s=5.0, reference_times_s=[5.0, 5.5], reference_real_mfu=0.08,
               process_max_rss_gb=15.0)
    longest = dict(shared, reference_longest_step_s=3.0, reference_longest_times_s=[3.0, 3.3],
                   reference_longest_real_mfu=0.13, process_max_rss_gb=14.0)
    assert ts.merge_isolated([padded, ours, cap, longest]) == ts.merge_isolated(
        [dict(padded, label="ours"), dict(ours, label="ours_b4"), cap, longest])
    # A child killed for memory is recorded and shown; the others still make the row.
    failed = ts.merge_isolated([padded, ours, {"label": "reference", "failed": "killed by signal 9 (out of memory)"}])
    assert failed["reference_failed"].startswith("killed") and "ratio_ours_b4_over_reference" not in failed
    path = tmp_path / "failed.json"
    path.write_text(json.dumps({"machine": {}, "results": [failed]}))
    assert "| reference (cap) | did not run: killed by signal 9 (out of memory) |" in lt.table(str(path))
    # So is a failed padded step (no ours_compile_s then, only ours_failed).
    no_padded = ts.merge_isolated([{"label": "ours", "failed": "exit status 1"}, ours, cap])
    assert "ours_compile_s" not in no_padded and no_padded["ratio_ours_b4_over_reference"] == 2.5
    path.write_text(json.dumps({"machine": {}, "results": [no_padded]}))
    assert "| ours padded | did not run: exit status 1 |" in lt.table(str(path))
    # The header names both frameworks' matmul speed (the ratios depend on it), over the children's runs.
    peaks = [{"size": 2048, "dtype": "float32", "xla_gflops": 150.2, "torch_gflops": 170.0}, None,
             {"size": 2048, "dtype": "float32", "xla_gflops": 165.0, "torch_gflops": 170.4}]
    path.write_text(json.dumps({"machine": {}, "matmul_peak": peaks, "results": [no_padded]}))
    assert "; float32 2048^3 matmul: XLA 150-165, PyTorch 170 GFLOP/s;" in lt.table(str(path))
    # A failed length-aware step is shown as well; on a GPU each implementation's own peak device memory.
    gpu_ours = dict(ours, ours_peak_bytes=3 * 2**30)
    gpu_cap = dict(cap, reference_peak_bytes=12 * 2**30, ours_peak_bytes=2**30)
    row = ts.merge_isolated([{"label": "ours_b4_scan", "failed": "exit status 1"}, gpu_ours, gpu_cap])
    assert (row["ours_b4_peak_gpu_gb"], row["reference_peak_gpu_gb"]) == (3.0, 12.0)
    path.write_text(json.dumps({"machine": {}, "results": [row]}))
    text = lt.table(str(path))
    assert "| ours length-aware (4, layers scanned) | did not run: exit status 1 |" in text
    assert "peak GPU GB |" in text and "| 2.5x" not in text and "| 2.50x |  |  | 3.0 | 3.0 |" in text
    row = ts.merge_isolated([padded, ours, cap, longest])
    assert row["isolated"] and row["process_max_rss_gb"] == 15.0
    assert (row["ours_step_s"], row["ours_b4_step_s"], row["ours_max_rss_gb"], row["ours_b4_max_rss_gb"]) == (4.0, 2.0, 5.0, 3.0)
    assert row["ratio_ours_b4_over_reference"] == 2.5 and row["ratio_ours_b4_over_reference_longest"] == 1.5
    assert row["ratio_ours_over_reference"] == 1.25
    path = tmp_path / "isolated.json"
    path.write_text(json.dumps({"machine": {"load_average_start": [0.1, 0.1, 0.1]}, "results": [row]}))
    text = lt.table(str(path))
    assert "| ours length-aware (4) | 2.00 | 2.0, 2.1 | 20.0% | 90 | 2.50x | 1.50x | 2.00x | 3.0 |" in text
    assert "| reference (cap) | 5.00 | 5.0, 5.5 | 8.0% |  |  |  | 0.80x | 15.0 |" in text


def test_minilm_shape_is_minilms_architecture_tokenizer_and_pooling_with_random_weights(tmp_path, monkeypatch):
    """The GPU machine has MiniLM's tokenizer, config and pooling files only (benchmarks/gpu_prepare.sh):
    "minilm-shape" builds the same model from them, with fresh weights, for both implementations."""
    import shutil

    import numpy as np
    import transformers

    common = _script("common")
    real = common.minilm_folder()
    files = tmp_path / "minilm-files"  # what gpu_prepare.sh copies
    files.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "config.json"):
        shutil.copy(os.path.join(real, name), files / name)
    shutil.copytree(os.path.join(real, "1_Pooling"), files / "1_Pooling")
    monkeypatch.setenv("COCOHANERE_MINILM_DIR", str(files))
    folder = common.model_folder("minilm-shape", str(tmp_path / "cache"))
    model, pooling = common.load_torch_model(folder)
    want = transformers.BertConfig.from_pretrained(real)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
                "max_position_embeddings", "hidden_dropout_prob", "attention_probs_dropout_prob"):
        assert getattr(model.config, key) == getattr(want, key), key
    assert pooling == "mean"
    trained = transformers.AutoModel.from_pretrained(real)
    w = model.embeddings.word_embeddings.weight.detach().numpy()
    assert w.shape == trained.embeddings.word_embeddings.weight.shape
    assert not np.allclose(w, trained.embeddings.word_embeddings.weight.detach().numpy())
    # Written once: a second call returns the folder as it is.
    stamp = os.path.getmtime(os.path.join(folder, "config.json"))
    assert common.model_folder("minilm-shape", str(tmp_path / "cache")) == folder
    assert os.path.getmtime(os.path.join(folder, "config.json")) == stamp


def test_lengths_table_shows_a_scanned_padded_step_beside_the_padded_one(tmp_path):
    ts, lt = _script("train_step"), _script("lengths_table")
    assert ts.implementation_label("--length_buckets", "0+scan") == "ours_scan"
    shared = dict(model="minilm-shape", batch=32, k=10, lq=128, lc=256, bank=8096, model_gflops_per_step=1.0,
                  real_token_gflops_per_step=0.4, reencode_fraction=None, dtype="bfloat16", length_chunk=8,
                  real_token_fraction={"query": 0.14, "code": 0.55})
    padded = dict(shared, ours_step_s=0.08, ours_times_s=[0.08, 0.08], ours_real_mfu=0.11, ours_compile_s=60.0,
                  compile_s=60.0, process_max_rss_gb=4.0)
    scanned = dict(shared, ours_scan_step_s=0.1, ours_scan_times_s=[0.1, 0.1], ours_scan_real_mfu=0.09,
                   ours_scan_compile_s=40.0, ours_step_s=0.1, ours_times_s=[0.1, 0.1], compile_s=40.0,
                   process_max_rss_gb=4.0)
    row = ts.merge_isolated([dict(padded, label="ours"), dict(scanned, label="ours_scan")])
    assert row["ours_step_s"] == 0.08 and row["ours_scan_step_s"] == 0.1
    path = tmp_path / "scan.json"
    path.write_text(json.dumps({"machine": {}, "results": [row]}))
    text = lt.table(str(path))
    assert "| ours padded (layers scanned) | 0.10 | 0.10, 0.10 | 9.0% | 40 |  |  | 0.80x |" in text
    assert "| ours padded | 0.080 | 0.080, 0.080 | 11.0% | 60 |" in text


def test_lengths_table_gives_sub_second_times_two_significant_digits():
    lt = _script("lengths_table")
    assert [lt.seconds(v, 2) for v in (33.074, 1.0, 0.0843, 0.2373, 0.698)] == ["33.07", "1.00", "0.084", "0.24", "0.70"]
    assert [lt.seconds(v, 1) for v in (22.2, 0.097)] == ["22.2", "0.097"]


def test_isolated_run_hands_over_what_it_has_after_every_child(monkeypatch):
    """--isolate writes a partial result after every child (a GPU run cut by its time limit keeps the children
    it finished): the first child failing leaves nothing to write; each later one adds its columns."""
    import subprocess

    ts = _script("train_step")
    shared = dict(model="codet5p-110m", batch=32, k=10, lq=128, lc=256, bank=8096, model_gflops_per_step=1.0,
                  real_token_gflops_per_step=0.5, reencode_fraction=None, dtype="bfloat16", length_chunk=8,
                  real_token_fraction={"query": 0.15, "code": 0.56}, process_max_rss_gb=1.0)
    step_s = {"ours_b4_scan_plan": 2.0, "reference": 5.0}

    def fake_run(cmd, check=False):
        flag, value = next(a.split("=") for a in cmd if a.startswith(("--length_buckets=", "--reference_padding="))
                           and not a.endswith("="))
        label = ts.implementation_label(flag, value)
        if label not in step_s:
            return subprocess.CompletedProcess(cmd, -9)
        out = next(a for a in cmd if a.startswith("--out="))[len("--out="):]
        with open(out, "w") as f:
            json.dump({"matmul_peak": None, "results": [dict(shared, **{f"{label}_step_s": step_s[label],
                                                                        f"{label}_times_s": [step_s[label]]})]}, f)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    seen = []
    argv = ["--isolate", "--length_buckets=0,4+scan+plan", "--reference_padding=cap"]
    args = argparse.Namespace(length_buckets="0,4+scan+plan", reference_padding="cap", isolate_order="forward")
    rows, peaks = ts.run_isolated(argv, args, 2, on_child=lambda rows, peaks: seen.append(rows[0]))
    assert len(seen) == 2 and "ours_failed" in seen[0] and "reference_step_s" not in seen[0]
    assert seen[1] == rows[0] and rows[0]["ratio_ours_b4_scan_plan_over_reference"] == 2.5 and len(peaks) == 3
    only_failed = argparse.Namespace(length_buckets="0", reference_padding="", isolate_order="forward")
    with pytest.raises(SystemExit, match="every implementation failed"):
        ts.run_isolated(["--isolate"], only_failed, 1, on_child=lambda rows, peaks: seen.append(rows[0]))
    assert len(seen) == 2


def test_encoder_grad_smoke(tmp_path, cache):
    """benchmarks/encoder_grad.py: every function of one encode call (ours padded, length-aware and its
    forward alone, along a length plan, PyTorch at the cap and at the longest row) timed with positive,
    finite figures."""
    out = str(tmp_path / "encoder_grad.json")
    payload = _script("encoder_grad").main(["--smoke", "--out", out])
    data = _check(out, payload, "rows")
    names = [r["function"] for r in data["rows"]]
    assert names[:10] == ["ours one call", "ours padded", "ours padded chunks", "ours padded remat chunks",
                          "ours length-aware", "ours length-aware fwd", "ours length plan",
                          "ours padded [float32 probs]", "ours one call fwd", "ours padded fwd"]
    assert set(names[10:]) == {"torch cap", "torch longest"}
    assert data["args"]["chunk"] == 4  # the smoke run's 6 rows make two chunks
    plan = data["length_plan"]
    assert sum(plan["sizes"]) == 6 and plan["lengths"][0] <= 32  # the smoke run: 6 rows, 32-token cap
    assert data["embedding_max_abs_diff"] < 1e-4  # ours and PyTorch compute the same embeddings
    for row in data["rows"]:
        assert 0 < row["real_token_mfu"] and len(row["rounds_s"]) == 1
        assert (row["function"] == "torch cap") == ("vs_torch_cap" not in row)
        assert (row["compiled_temp_gb"] is None) == row["function"].startswith("torch")
        assert row["function"].startswith("torch") or row["compiled_temp_gb"] > 0


def test_step_profile_splits_a_tiny_step_by_pass_and_bucket(tmp_path):
    """benchmarks/step_profile.py: one traced step of the length-aware chunks, its ops summed per pass
    (first forward, second forward, backward) and bucket, the chunks of the first forward counted."""
    sp = _script("step_profile")
    assert sp.classify("jit(step)/jvp()/while/body/closed_call/cond/branch_3_fun/vmap(T5Encoder)/wi/dot_general") \
        == ("first forward", 3)
    assert sp.classify("jit(step)/transpose(jvp())/while/body/cond/branch_1_fun/jvp(vmap(T5Encoder))/wo") \
        == ("second forward", 1)
    assert sp.classify("jit(step)/transpose(jvp())/while/body/cond/branch_0_fun/transpose(jvp(vmap(T5Encoder)))/x") \
        == ("backward", 0)
    assert sp.classify("jit(step)/jvp()/top_k") == ("other", None)
    out = str(tmp_path / "step_profile.json")
    payload = sp.main(["--model", "codet5p-tiny", "--size", "2,2,16,32", "--bank", "64", "--steps", "1",
                       "--length_chunk", "2", "--out", out])
    passes = {r["pass"] for r in payload["rows"]}
    assert {"first forward", "second forward", "backward", "other"} <= passes
    assert all(r["op_s"] > 0 for r in payload["rows"])
    # Every pooled row runs in some chunk: 2 + 2 batch rows, 2 * 2 * 2 neighbours, chunks of 2.
    assert sum(r["chunks"] for r in payload["rows"] if r["pass"] == "first forward") == (4 + 8) // 2
    with open(out, encoding="utf-8") as f:
        assert json.load(f)["benchmark"] == "step_profile"
    doc = tmp_path / "doc.md"
    doc.write_text("a\n<!-- p:begin -->\nold\n<!-- p:end -->\nb\n")
    sp.main(["--table", out, "--into", f"{doc}:p"])
    text = doc.read_text()
    assert "old" not in text and "| first forward |" in text and text.startswith("a\n") and text.endswith("b\n")


def test_encoder_grad_takes_attention_dropout_off_on_both_sides(tmp_path):
    """--dropout hidden: our module and the PyTorch model both run without attention-probability dropout
    (what it costs each framework is then the difference to a --dropout on run); T5 has no such switch."""
    eg = _script("encoder_grad")
    payload = eg.main(["--model", "minilm-shape", "--rows", "2", "--length", "16", "--rounds", "1", "--dtype",
                       "bfloat16", "--dropout", "hidden", "--only",
                       "ours padded,ours padded [compute probs],torch cap",
                       "--out", str(tmp_path / "hidden.json")])
    assert payload["attention_dropout"] == {"ours": 0.0, "torch": [0.0]}  # what the module itself holds
    assert payload["torch_attn_implementation"] in ("sdpa", "eager")
    assert {r["function"] for r in payload["rows"]} == {"ours padded", "ours padded [compute probs]", "torch cap"}
    assert "dropout on except attention's, bfloat16 compute" in payload["title"]
    on = eg.main(["--model", "minilm-shape", "--rows", "2", "--length", "16", "--rounds", "1", "--only", "ours padded",
                  "--out", str(tmp_path / "on.json")])
    assert on["attention_dropout"]["ours"] > 0 and on["attention_dropout"]["torch"][0] > 0
    with pytest.raises(SystemExit, match="BERT-family"):
        eg.main(["--smoke", "--dropout", "hidden", "--out", str(tmp_path / "t5.json")])


def test_embed_lengths_smoke(tmp_path, cache):
    """benchmarks/embed_lengths.py: evaluation's embedding, padded and length-aware, timed on rows of mixed
    real lengths; the two give the same embeddings."""
    out = str(tmp_path / "embed_lengths.json")
    payload = _script("embed_lengths").main(["--smoke", "--out", out])
    data = _check(out, payload, "results")
    assert [r["function"] for r in data["results"]] == ["padded", "length-aware (4)"]
    assert 0 < data["real_token_fraction"] < 1  # the rows do not all reach the cap
    for row in data["results"]:
        assert row["median_s"] > 0 and len(row["rounds_s"]) == 1 and row["max_abs_diff_vs_padded"] < 1e-4


def test_interleaved_rotation_changes_who_runs_after_whom():
    """common.interleaved(rotate=True): each round starts at another function, the rounds stay paired."""
    common = _script("common")
    order = []
    fns = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = common.interleaved(fns, rounds=3, warmup=0, rotate=True)
    assert order == list("abc") + list("acb") + list("cab")  # shifted, and odd rounds reversed
    assert {name: len(ts) for name, ts in times.items()} == {"a": 3, "b": 3, "c": 3}
    rounds = [order[i:i + 3] for i in (0, 3, 6)]
    before = lambda name, r: r[r.index(name) - 1] if r.index(name) else None  # noqa: E731
    for name in "abc":  # nobody runs after the same function in every round
        assert len({before(name, r) for r in rounds}) > 1, name
    order.clear()
    common.interleaved(fns, rounds=2, warmup=1)
    assert order == list("abc") * 3


def test_lengths_plot_draws_every_configuration(tmp_path):
    pytest.importorskip("matplotlib")
    lt = _script("lengths_table")
    row = {"model": "minilm", "batch": 8, "k": 10, "lq": 128, "lc": 256, "ours_b4_step_s": 2.0,
           "ours_b4_real_mfu": 0.25, "reference_step_s": 4.0, "reference_real_mfu": 0.12,
           "reference_longest_failed": "killed by signal 9 (out of memory)"}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"machine": {}, "results": [row, dict(row, model="codet5p-110m")]}))
    drawn = lt.plot([str(path)], str(tmp_path / "p.png"))
    assert os.path.getsize(tmp_path / "p.png") > 1000
    assert sorted(drawn["bars"]) == sorted((f"{m} B 8, k 10 128/256", name, mfu) for m in ("MiniLM", "CodeT5+")
                                           for name, mfu in (("ours length-aware (4)", 0.25), ("reference (cap)", 0.12)))
    assert sorted(drawn["marked"]) == sorted((f"{m} B 8, k 10 128/256", "reference (longest)", "OOM")
                                             for m in ("MiniLM", "CodeT5+"))
    with pytest.raises(SystemExit, match="no step results"):
        lt.plot([], str(tmp_path / "q.png"))


def test_update_step_smoke(tmp_path):
    """benchmarks/update_step.py: our clip + AdamW update against PyTorch's on the same parameters."""
    out = str(tmp_path / "update_step.json")
    payload = _script("update_step").main(["--smoke", "--out", out])
    data = _check(out, payload, "rows")
    assert [r["function"] for r in data["rows"]] == ["ours", "torch"]
    assert data["parameters"]["ours"] == data["parameters"]["torch"]  # the same model on both sides


def test_xla_flags_table_names_each_runs_flags_and_its_speed_against_the_default(tmp_path):
    xt = _script("xla_flags_table")
    paths = []
    for i, (flags, padded, aware) in enumerate([("", 16.0, 8.0), ("--xla_cpu_use_onednn=true", 17.0, 10.0)]):
        run = {"machine": {"date": f"2026-12-03T23:0{i}:00", "xla_flags": flags},
               "matmul_peak": {"xla_gflops": 150.0}, "load_before": [1.5], "load_after": [1.8],
               "rows": [{"function": "ours padded", "median_s": padded, "rounds_s": [padded, padded]},
                        {"function": "ours length-aware", "median_s": aware, "rounds_s": [aware, aware + 1]}]}
        paths.append(tmp_path / f"xla_flags_{i}.json")
        paths[-1].write_text(json.dumps(run))
    text = xt.table([str(p) for p in reversed(paths)])  # rows follow the runs' dates, not the argument order
    lines = text.splitlines()
    assert lines[2].startswith("| `(default)` | 16.00 (16.0, 16.0) | 8.00 (8.0, 9.0) | 150 | 1.5 -> 1.8 | 1.00x |")
    assert lines[3].startswith("| `--xla_cpu_use_onednn=true` | 17.00") and lines[3].endswith("| 0.80x |")
    # train_step files (run_xla_flags_step.sh): a column per timed step, the ratio of the last one
    steps = []
    for i, (flags, t) in enumerate([("", 20.0), ("--xla_cpu_use_onednn=true", 16.0)]):
        run = {"benchmark": "train_step", "machine": {"date": f"2026-12-05T0{i}:00:00", "xla_flags": flags,
                                                      "load_average_start": [1.0], "load_average_end": [1.2]},
               "matmul_peak": {"xla_gflops": 300.0},
               "results": [{"ours_step_s": t, "ours_times_s": [t], "ours_b4_scan_pack_c2_step_s": t,
                            "ours_b4_scan_pack_c2_times_s": [t, t + 1], "ours_b4_scan_pack_c2_mfu": 0.2}]}
        steps.append(tmp_path / f"xla_step_flags_{i}.json")
        steps[-1].write_text(json.dumps(run))
    lines = xt.table([str(p) for p in steps]).splitlines()
    assert lines[0] == ("| XLA_FLAGS | ours_b4_scan_pack_c2 median s (rounds) | 2048^3 matmul GFLOP/s | "
                        "load start -> end | ours_b4_scan_pack_c2: default / this |")
    assert lines[2] == "| `(default)` | 20.00 (20.0, 21.0) | 300 | 1.0 -> 1.2 | 1.00x |"
    assert lines[3] == "| `--xla_cpu_use_onednn=true` | 16.00 (16.0, 17.0) | 300 | 1.0 -> 1.2 | 1.25x |"
