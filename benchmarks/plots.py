"""PNG plots of the growth curves from the JSON results (matplotlib; skipped with a note without it).

    python -m benchmarks.plots                       # results/{growth,search}.json -> benchmarks/*.png
    python -m benchmarks.plots --results DIR --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(path: str):
    if not os.path.isfile(path):
        print(f"plots: {path} not found, skipped")
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def main(argv=None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=os.path.join(HERE, "results"))
    parser.add_argument("--out", default=HERE)
    parser.add_argument("--suffix", default="", help="read <name><suffix>.json (e.g. _smoke)")
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots: matplotlib not installed (pip install -r benchmarks/requirements.txt): no plots written")
        return []
    os.makedirs(args.out, exist_ok=True)
    written = []

    growth = _load(os.path.join(args.results, f"growth{args.suffix}.json"))
    if growth:
        cfg = growth["config"]
        title = f"{cfg['model']}, batch {cfg['batch']}, Lq {cfg['lq']}, Lc {cfg['lc']}"
        for sweep, key, xlabel, log in (("k_sweep", "k", "hard negatives per anchor k", False),
                                        ("bank_sweep", "bank", "bank entries", True)):
            rows = growth[sweep]
            xs = [r[key] for r in rows]
            fig, ax = plt.subplots(figsize=(5.5, 3.8))
            ax.plot(xs, [r["ours_step_s"] for r in rows], "o-", label="ours (JAX, jitted)")
            if all("reference_step_s" in r for r in rows):
                ax.plot(xs, [r["reference_step_s"] for r in rows], "s--", label="PyTorch reference")
            if log:
                ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("step time, median (s)")
            ax.set_ylim(bottom=0)
            extra = f", bank {cfg['banks'][0]}" if key == "k" else f", k {cfg['ks'][-1]}"
            ax.set_title(title + extra, fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend()
            fig.tight_layout()
            path = os.path.join(args.out, f"growth_{key}{args.suffix}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)

    search = _load(os.path.join(args.results, f"search{args.suffix}.json"))
    if search:
        rows = search["results"]
        xs = [r["bank"] for r in rows]
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for name, style in (("ours", "o-"), ("numpy", "^-"), ("faiss", "s--"), ("faiss_blas", "d:")):
            if all(f"{name}_ms" in r for r in rows):
                ax.plot(xs, [r[f"{name}_ms"] for r in rows], style, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("bank entries")
        ax.set_ylabel("search time, median (ms)")
        r0 = rows[0]
        ax.set_title(f"exact top-{r0['k']}, {r0['queries']} queries, d={r0['dim']}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        fig.tight_layout()
        path = os.path.join(args.out, f"search{args.suffix}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
