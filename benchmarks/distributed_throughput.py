"""Training throughput (images/s) of data-parallel training with 1, 2, … processes on this
machine, against one process without torch.distributed and against Pyro's own SVI.

    python -m benchmarks.distributed_throughput --threads 1            # every rank 1 thread
    python -m benchmarks.distributed_throughput                        # threads = CPU count
    python benchmarks/distributed_throughput.py --quick --out /tmp/dt  # smoke run
    python -m benchmarks.distributed_throughput --device cuda --processes 1 2   # GPUs (nccl)

For each number of processes P the script spawns P ranks of a gloo (CPU) or nccl (GPU)
process group on the loopback interface, exactly as ``torchrun --nproc-per-node P`` would, and
times the training steps of :func:`pyro_vae.fit.fit` in distributed mode: every rank
slices the same global minibatch of ``batch_size`` binarized MNIST images and steps
:class:`pyro_vae.trainer.Trainer` with its ``world`` (DDP's gradient all-reduce, torch Adam).
Two one-process rows come first: ``1, Pyro SVI`` (``pyro.infer.SVI`` with ``pyro.optim.Adam``
and the same ELBO, what a user of Pyro pays) and ``1, no DDP`` (the same ``Trainer`` without
torch.distributed), so that the cost of DDP itself shows.

Threads: each rank gets ``threads // P`` intra-op threads (at least one; ``threads`` defaults to
the CPU count), so every row uses the same cores. Images/s = global minibatches × batch_size /
seconds, after ``warmup`` untimed steps, median of ``repeats`` timed blocks.

Writes ``OUT/distributed_throughput.json`` (every number, with the configuration and machine)
and ``OUT/distributed_throughput.md`` (the table). Timings on a machine shared with other
work are noisy: the JSON records the load average before and after every row.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file, python benchmarks/distributed_throughput.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import dataclasses
import json
import os
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass

import pyro
import torch
import torch.multiprocessing as mp

from benchmarks.common import (
    RESULTS,
    PyroSVI,
    add_common_arguments,
    command_line,
    load_average,
    machine,
    markdown_table,
    output,
    run_main,
    write_results,
)
from pyro_vae.build import build_vae, load_data
from pyro_vae.commands.options import Parser, positive_int
from pyro_vae.config import TrainConfig
from pyro_vae.data import binarize
from pyro_vae.distributed import init_process_group
from pyro_vae.fit import step_checks
from pyro_vae.objectives import PyroObjective, make_objective
from pyro_vae.trainer import Trainer

DEFAULT_OUT = RESULTS / "distributed_throughput"


# --- configuration -----------------------------------------------------------------------------
@dataclass
class ThroughputConfig:
    estimator: str = "meanfield"
    processes: tuple[int, ...] = (1, 2)  # P values; the one-process rows are added
    batch_size: int = 128  # the global minibatch (rows per rank: batch_size / P)
    preset: str = "pyro"  # 784-400-50 softplus: the network of Pyro's VAE example
    hidden_sizes: tuple[int, ...] | None = None  # None: the preset's
    latent_dim: int | None = None
    steps: int = 100  # timed steps per block
    repeats: int = 3  # timed blocks; the median is reported
    warmup: int = 10  # untimed steps first (allocations, JIT, DDP's first all-reduce)
    threads: int = os.cpu_count() or 1  # intra-op threads in all, shared by the P ranks
    device: str = "cpu"  # cuda: nccl, one GPU per rank
    train_size: int = 10_000  # images the minibatches are drawn from
    seed: int = 0

    def train_config(self) -> TrainConfig:
        return TrainConfig(estimator=self.estimator, batch_size=self.batch_size,
                           preset=self.preset, hidden_sizes=self.hidden_sizes,
                           latent_dim=self.latent_dim, device=self.device,
                           train_size=self.train_size, test_size=100, seed=self.seed)


QUICK = dict(processes=(2,), steps=10, repeats=2, warmup=2, hidden_sizes=(64,), latent_dim=8,
             train_size=1024)


# --- timing ------------------------------------------------------------------------------------
def _setup(cfg: ThroughputConfig, threads: int):
    """This process's threads, its training images and a freshly seeded VAE."""
    torch.set_num_threads(threads)
    config = cfg.train_config()
    data = load_data(config).train
    pyro.clear_param_store()
    pyro.set_rng_seed(cfg.seed)
    return data, build_vae(config, data.shape[1]).to(data.device)


def _time_steps(cfg: ThroughputConfig, trainer, data: torch.Tensor, sync) -> list[float]:
    """Seconds of each timed block of ``cfg.steps`` steps, as fit's loop does them."""
    n = data.shape[0]
    generator = torch.Generator(device=data.device).manual_seed(cfg.seed)
    permutation = torch.randperm(n, generator=generator, device=data.device)

    def step(i):
        start = (i * cfg.batch_size) % (n - cfg.batch_size + 1)
        x = binarize(data[permutation[start : start + cfg.batch_size]], generator)
        trainer.step(x)

    for i in range(cfg.warmup):
        step(i)
    blocks = []
    with step_checks(False):  # fit validates its first step only
        for _ in range(cfg.repeats):
            sync()
            t0 = time.perf_counter()
            for i in range(cfg.steps):
                step(i)
            sync()
            blocks.append(time.perf_counter() - t0)
    return blocks


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rank(rank: int, world_size: int, port: int, cfg: ThroughputConfig, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    world = init_process_group(device=cfg.device, timeout=120)
    data, vae = _setup(cfg, max(1, cfg.threads // world_size))
    trainer = Trainer(make_objective(cfg.estimator, vae), 1e-3, world=world, seed=cfg.seed)

    def sync():
        _synchronize(data.device)
        torch.distributed.barrier()

    blocks = _time_steps(cfg, trainer, data, sync)
    if world.is_main:
        (out / f"p{world_size}.json").write_text(json.dumps(blocks))
    torch.distributed.destroy_process_group()


def _one_process(cfg: ThroughputConfig, make_trainer) -> list[float] | None:
    """A one-process row: ``make_trainer(objective)`` stepped in this process (``None`` if it
    returns no trainer)."""
    data, vae = _setup(cfg, cfg.threads)
    trainer = make_trainer(make_objective(cfg.estimator, vae))
    if trainer is None:
        return None
    return _time_steps(cfg, trainer, data, lambda: _synchronize(data.device))


def _pyro_svi(objective) -> PyroSVI | None:
    """Pyro's SVI for a Pyro ELBO; nothing for a hand-written loss, which SVI cannot step."""
    return PyroSVI(objective, 1e-3) if isinstance(objective, PyroObjective) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(cfg: ThroughputConfig, processes: int, tmp: Path, *, tries: int = 3) -> list[float]:
    """The timed blocks of ``processes`` ranks. A port found free can be taken by another
    program before rank 0 binds it: then the ranks fail to meet, and a new port is tried."""
    for attempt in range(1, tries + 1):
        try:
            mp.spawn(_rank, args=(processes, _free_port(), cfg, tmp), nprocs=processes)
            break
        except mp.ProcessRaisedException:
            if attempt == tries:
                raise
    return json.loads((tmp / f"p{processes}.json").read_text())


# --- the run -----------------------------------------------------------------------------------
def run(cfg: ThroughputConfig, *, log=print) -> list[dict]:
    """Time every row; one dict per row."""
    if cfg.device.startswith("cuda") and max(cfg.processes) > torch.cuda.device_count():
        raise SystemExit(f"{max(cfg.processes)} processes need as many GPUs (nccl), found "
                         f"{torch.cuda.device_count()}")
    rows = []

    def add(label, processes, measure):
        load_before = load_average()
        blocks = measure()
        if blocks is None:
            return
        seconds = statistics.median(blocks)
        rows.append({"processes": label, "world_size": processes,
                     "threads_per_process": max(1, cfg.threads // processes),
                     "seconds_per_block": blocks,
                     "images_per_second": cfg.steps * cfg.batch_size / seconds,
                     "ms_per_step": 1000 * seconds / cfg.steps,
                     "load_average_before": load_before, "load_average_after": load_average()})
        log(f"{label:>14}: {rows[-1]['images_per_second']:9.0f} images/s "
            f"({rows[-1]['ms_per_step']:.2f} ms per global step of {cfg.batch_size})")

    add("1, Pyro SVI", 1, lambda: _one_process(cfg, _pyro_svi))
    add("1, no DDP", 1, lambda: _one_process(cfg, lambda o: Trainer(o, 1e-3)))
    with tempfile.TemporaryDirectory() as tmp:
        for p in cfg.processes:
            add(f"{p} DDP", p, lambda p=p: _spawn(cfg, p, Path(tmp)))
    base = next(r for r in rows if r["processes"] == "1, no DDP")["images_per_second"]
    for row in rows:
        row["speedup_vs_no_ddp"] = row["images_per_second"] / base
    return rows


def markdown(report: dict) -> str:
    cfg, rows = report["config"], report["rows"]
    where = report["machine"]["cuda"] or f"{report['machine']['cpu_count']} CPU cores"
    lines = [
        f"Throughput of `{cfg['estimator']}` training steps, global minibatch "
        f"{cfg['batch_size']}, preset `{cfg['preset']}`, {cfg['device']} ({where}; load "
        f"average {rows[0]['load_average_before']:.1f} before, "
        f"{rows[-1]['load_average_after']:.1f} after).",
        "",
        f"Command: `{report['command']}`",
        "",
        markdown_table(
            ["processes", "threads each", "images/s", "ms per step", "vs no DDP", "load"],
            [[r["processes"], str(r["threads_per_process"]), f"{r['images_per_second']:.0f}",
              f"{r['ms_per_step']:.2f}", f"{r['speedup_vs_no_ddp']:.2f}×",
              f"{r['load_average_before']:.1f} → {r['load_average_after']:.1f}"]
             for r in rows]),
    ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = Parser(description=__doc__.splitlines()[0])
    default = ThroughputConfig()
    parser.add_argument("--estimator", default=default.estimator,
                        help=f"default {default.estimator}")
    parser.add_argument("--processes", type=positive_int, nargs="+",
                        help=f"default {' '.join(map(str, default.processes))} (quick: 2)")
    parser.add_argument("--batch-size", type=positive_int, default=default.batch_size,
                        help=f"the global minibatch (default {default.batch_size})")
    parser.add_argument("--steps", type=positive_int, help=f"timed steps per block (default "
                                                  f"{default.steps})")
    parser.add_argument("--device", default="cpu", help="cpu (gloo, default) or cuda (nccl)")
    add_common_arguments(parser, DEFAULT_OUT, threads=default.threads)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = dict(QUICK) if args.quick else {}
    overrides.update(estimator=args.estimator, batch_size=args.batch_size, threads=args.threads,
                     device=args.device)
    if args.processes:
        overrides["processes"] = tuple(args.processes)
    if args.steps:
        overrides["steps"] = args.steps
    cfg = ThroughputConfig(**overrides)
    torch.set_num_threads(cfg.threads)  # the one-process rows'; each rank sets its own
    log, _ = output(args)
    report = {
        "benchmark": "distributed_throughput",
        "units": "images/s = global minibatch rows trained per second (higher is better)",
        "command": command_line("benchmarks.distributed_throughput", argv),
        "config": dataclasses.asdict(cfg),
        "machine": machine(),
    }
    report["rows"] = run(cfg, log=log)
    write_results(args.out, "distributed_throughput", report, markdown(report))
    log(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main, "benchmarks.distributed_throughput"))
