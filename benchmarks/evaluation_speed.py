"""How fast log p(x) is measured, against the rate of the same matrix products alone.

    python -m benchmarks.evaluation_speed                     # AIS on default, IS on burda2_full
    python -m benchmarks.evaluation_speed --images 10000      # every test image (minutes)
    python benchmarks/evaluation_speed.py --quick --out /tmp/speed   # smoke run

Two runs, each as ``pyro-vae evaluate`` does it by default (every core, the runner's threads):
AIS (T = 100, 16 chains, 5 leapfrog steps) on ``benchmarks/models/default``, and importance
sampling with K = 5000 on ``benchmarks/models/burda2_full``, on the first ``--images`` test
images. The floor of each is the matrix products that run once per sample alone, timed in the
same process just before and after, on as many rows as one block of the run and on as many
threads as the run uses at once: the decoder's forward and input gradient for AIS (its HMC
steps need ∂/∂z), and for IS the forward of every network but the first encoder (which runs
once per image): the upper encoders, the priors' networks and the decoder. Reported: seconds,
seconds per 10 000 images (extrapolated), the achieved rate of those products (FLOP/s) over the
floor's, the estimate (a stochastic lower bound on log p(x), nats per image), peak resident
memory and the load. Writes ``OUT/evaluation_speed.json`` and ``.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file, python benchmarks/evaluation_speed.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import resource
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from benchmarks.common import (
    RESULTS,
    add_common_arguments,
    command_line,
    linear_weights,
    load_average,
    machine,
    markdown_table,
    output,
    run_main,
    write_results,
)
from pyro_vae.build import load_data
from pyro_vae.commands.options import Parser, positive_int
from pyro_vae.evaluation import AISSettings, Execution, ais, estimate_log_px
from pyro_vae.evaluation.ais import block_size_for
from pyro_vae.evaluation.importance import _layout
from pyro_vae.evaluation.targets import LayeredTarget
from pyro_vae.runs import vae_from_checkpoint
from pyro_vae.threads import set_threads

DEFAULT_OUT = RESULTS / "evaluation_speed"
MODELS = Path(__file__).resolve().parent / "models"
RUNS = {"ais": ("default", "AIS, T = 100, 16 chains"), "is": ("burda2_full", "IS, K = 5000")}


def floor_rate(weights, rows: int, *, backward: bool, workers: int, repeats: int = 10) -> float:
    """FLOP/s of the matrix products of ``weights`` alone on ``rows`` rows, forward (and the
    input gradient with ``backward``), ``workers`` blocks at once on one thread each."""
    inputs = [torch.randn(rows, w.shape[1]) for w in weights]
    grads = [torch.randn(rows, w.shape[0]) for w in weights]
    per_block = (4 if backward else 2) * rows * sum(w.numel() for w in weights)

    def block(_) -> None:
        for _ in range(repeats):
            for h, g, w in zip(inputs, grads, weights, strict=True):
                torch.nn.functional.linear(h, w)
                if backward:
                    g @ w

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        block(0)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(block, range(workers)))
        return per_block * repeats * workers / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)


def measure(method: str, images: int, quick: bool) -> dict:
    name, what = RUNS[method]
    vae, checkpoint = vae_from_checkpoint(MODELS / name)
    x = load_data(checkpoint.config, train=False).test[:images]
    weights = linear_weights(vae.decoder)  # AIS: the decoder's products at every evaluation
    workers = torch.get_num_threads()
    if method == "ais":
        settings = AISSettings(num_steps=5, num_chains=4) if quick else AISSettings()
        what = f"AIS, T = {settings.num_steps}, {settings.num_chains} chains"
        target = LayeredTarget(vae)
        rows = block_size_for(target, (x,), settings.num_chains, 128.0) * settings.num_chains
        evaluations = settings.num_chains * settings.density_evaluations(
            target.closed_form_start)
        flops_per_image, backward = 4 * sum(w.numel() for w in weights) * evaluations, True
        run = lambda: ais(vae, x, settings, execution=Execution())  # noqa: E731
    else:
        k = 50 if quick else 5000
        what = f"IS, K = {k}"
        _, per_chunk, samples, _ = _layout(vae, images, k, x.element_size(), Execution())
        rows = per_chunk * samples  # rows of one chunk through the decoder
        # per sample, every network but the first encoder (once per image) runs: the guide's
        # upper layers, the priors' networks and the decoder
        weights = [w for net in (*vae.encoders[1:], *vae.priors, vae.decoder)
                   for w in linear_weights(net)]
        flops_per_image, backward = 2 * sum(w.numel() for w in weights) * k, False
        run = lambda: estimate_log_px(vae, x, num_samples=k)  # noqa: E731
    before, load_before = floor_rate(weights, rows, backward=backward, workers=workers), \
        load_average()
    t0 = time.perf_counter()
    estimate = run()
    seconds = time.perf_counter() - t0
    after = floor_rate(weights, rows, backward=backward, workers=workers)
    rate = flops_per_image * images / seconds
    return {"method": what, "model": f"benchmarks/models/{name}", "images": images,
            "seconds": seconds, "seconds_per_10000": seconds * 10000 / images,
            "log_px_mean": float(estimate.log_px.mean()), "rows_per_block": rows,
            "threads": workers, "flops_per_second": rate, "floor_flops_per_second":
            [before, after], "rate_over_floor": rate / (0.5 * (before + after)),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "load_average_before_after": [load_before, load_average()]}


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=positive_int, default=1000,
                        help="test images per run (default 1000)")
    parser.add_argument("--methods", nargs="+", choices=tuple(RUNS), default=list(RUNS),
                        help="default: ais is")
    add_common_arguments(parser, DEFAULT_OUT, out_default_text=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    log = output(args).log
    set_threads(args.threads)
    images = 8 if args.quick else args.images
    rows = {}
    for method in args.methods:
        log(f"{RUNS[method][1]} on {images} test images of {RUNS[method][0]} ...")
        rows[method] = measure(method, images, args.quick)
    document = {"units": "seconds; FLOP/s; nats per image (log_px_mean, a stochastic lower "
                "bound on log p(x))", "command": command_line("benchmarks.evaluation_speed",
                                                             argv),
                "machine": machine(), "runs": rows}
    table = markdown_table(
        ["run", "images", "seconds", "per 10 000 images", "rate ÷ matmul floor", "log p(x)",
         "threads", "peak memory", "load"],
        [[r["method"] + f" ({r['model']})", str(r["images"]), f"{r['seconds']:.1f}",
          f"{r['seconds_per_10000'] / 60:.1f} min", f"{100 * r['rate_over_floor']:.0f} %",
          f"{r['log_px_mean']:.2f}", str(r["threads"]), f"{r['peak_rss_mb']:.0f} MB",
          " → ".join(f"{v:.1f}" for v in r["load_average_before_after"] if v is not None)]
         for r in rows.values()])
    write_results(args.out, "evaluation_speed", document, table + "\n")
    log(table)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, "benchmarks/evaluation_speed.py"))
