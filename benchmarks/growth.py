"""Cost growth of the train step: step time as k goes 0, 1, 5, 10 and as the bank grows 8k -> 1M.

Same side-by-side protocol as ``train_step.py`` (our jitted step against the PyTorch reference, same
weights, batch, lengths, threads; interleaved rounds, medians). k = 0 is the in-batch baseline ("w/o
HNCL": no search, no re-encoding). The bank sweep runs at the largest k of the k sweep. One model
(default all-MiniLM-L6-v2, real weights).

    python -m benchmarks.growth              # writes results/growth.json (plots: benchmarks/plots.py)
    python -m benchmarks.growth --smoke      # tiny model, two points per sweep
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

from benchmarks import common
from benchmarks import train_step

DEFAULT = dict(model="minilm", batch=8, lq=32, lc=64, ks=(0, 1, 5, 10), banks=(8096, 65536, 1048576), rounds=3)
SMOKE = dict(model="bert-tiny", batch=4, lq=16, lc=24, ks=(0, 1), banks=(64, 128), rounds=1)


def main(argv=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model, two points per sweep (CI)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--lq", type=int, default=None)
    parser.add_argument("--lc", type=int, default=None)
    parser.add_argument("--ks", default=None, help="comma-separated k values")
    parser.add_argument("--banks", default=None, help="comma-separated bank sizes")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--no-reference", action="store_true", help="time only our step")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "cocohanere_bench_models"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    threads = common.pin_threads(args.threads)
    cfg = dict(SMOKE if args.smoke else DEFAULT)
    for name in ("model", "batch", "lq", "lc", "rounds"):
        if getattr(args, name) is not None:
            cfg[name] = getattr(args, name)
    if args.ks:
        cfg["ks"] = tuple(int(v) for v in args.ks.split(","))
    if args.banks:
        cfg["banks"] = tuple(int(v) for v in args.banks.split(","))
    machine = common.machine_info(threads)
    peak = common.measure_matmul_peak(256 if args.smoke else 2048)
    folder = common.model_folder(cfg["model"], args.cache)
    reference = not args.no_reference

    def point(k: int, bank: int) -> dict[str, Any]:
        row = train_step.measure(cfg["model"], folder, cfg["batch"], k, cfg["lq"], cfg["lc"], bank, cfg["rounds"],
                                 peak["peak_gflops"], reference=reference,
                                 compiler_options=train_step.SMOKE_COMPILER_OPTIONS if args.smoke else None,
                                 pairs_limit=train_step.SMOKE_PAIRS if args.smoke else None)
        common.print_table([row], train_step.COLUMNS)
        return row

    k_rows = [point(k, cfg["banks"][0]) for k in cfg["ks"]]
    bank_rows = [k_rows[-1]] + [point(cfg["ks"][-1], bank) for bank in cfg["banks"][1:]]
    common.print_table(k_rows, train_step.COLUMNS, title=f"step time vs k (bank {cfg['banks'][0]})")
    common.print_table(bank_rows, train_step.COLUMNS, title=f"step time vs bank size (k {cfg['ks'][-1]})")
    payload = {"benchmark": "growth", "smoke": args.smoke, "machine": machine, "matmul_peak": peak,
               "config": {**cfg, "ks": list(cfg["ks"]), "banks": list(cfg["banks"])},
               "k_sweep": k_rows, "bank_sweep": bank_rows}
    common.write_json(args.out or common.default_out("growth", args.smoke), payload)
    return payload


if __name__ == "__main__":
    main()
