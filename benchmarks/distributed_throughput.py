"""Training throughput (images/s) of data-parallel SVI with 1, 2, … processes on this machine.

    python -m benchmarks.distributed_throughput                         # full run (minutes)
    python -m benchmarks.distributed_throughput --quick --out /tmp/dt   # smoke run, < 60 s
    python -m benchmarks.distributed_throughput --device cuda --processes 1 2   # GPUs (nccl)

For each number of processes P the script spawns P ranks of a gloo (CPU) or nccl (GPU)
process group on the loopback interface, exactly as ``torchrun --nproc-per-node P`` would, and
times the training loop of :func:`pyro_vae.training.fit` in distributed mode: every rank
slices the same global minibatch of ``batch_size`` binarized MNIST images and steps
:class:`pyro_vae.distributed.DistributedTrainer` (DDP's gradient all-reduce, torch Adam). The
baseline row, ``1 (no DDP)``, is the one-process trainer the estimator uses without
torch.distributed (Pyro's SVI for Pyro estimators), so the cost of DDP itself shows.

Threads: each rank gets ``threads // P`` intra-op threads (at least one; ``threads`` defaults to
the CPU count), so every row uses the same cores. Images/s = global minibatches × batch_size /
seconds, after ``warmup`` untimed steps, median of ``repeats`` timed blocks.

Writes ``OUT/distributed_throughput.json`` (every number, with the configuration and machine)
and ``OUT/distributed_throughput.md`` (the table). Timings on a machine shared with other
work are noisy: the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
import torch.multiprocessing as mp

from pyro_vae.checkpoint import atomic_write_bytes, atomic_write_json
from pyro_vae.data import binarize
from pyro_vae.distributed import DistributedTrainer, init_process_group
from pyro_vae.estimators import make_objective
from pyro_vae.training import TrainConfig, build_vae, prepare_data, step_checks

DEFAULT_OUT = Path(__file__).parent / "results" / "distributed_throughput"


# --- configuration ---------------------------------------------------------------------------
@dataclass
class ThroughputConfig:
    estimator: str = "meanfield"
    processes: tuple[int, ...] = (1, 2)  # P values; the no-DDP baseline is added
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


QUICK = dict(steps=10, repeats=2, warmup=2, hidden_sizes=(64,), latent_dim=8, train_size=1024)


# --- one rank --------------------------------------------------------------------------------
def _train_config(cfg: ThroughputConfig) -> TrainConfig:
    return TrainConfig(estimator=cfg.estimator, batch_size=cfg.batch_size, preset=cfg.preset,
                       hidden_sizes=cfg.hidden_sizes, latent_dim=cfg.latent_dim,
                       device=cfg.device, train_size=cfg.train_size, test_size=100,
                       seed=cfg.seed)


def _time_steps(cfg: ThroughputConfig, trainer, data, sync) -> list[float]:
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


def _rank(rank: int, world_size: int, port: int, cfg: ThroughputConfig, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(max(1, cfg.threads // world_size))
    world = init_process_group(device=cfg.device, timeout=120)
    config = _train_config(cfg)
    data = prepare_data(config).train
    pyro.clear_param_store()
    pyro.set_rng_seed(cfg.seed)
    vae = build_vae(config, data.shape[1]).to(data.device)
    trainer = DistributedTrainer(make_objective(cfg.estimator, vae), 1e-3, world=world,
                                 seed=cfg.seed)

    def sync():
        if data.device.type == "cuda":
            torch.cuda.synchronize()
        torch.distributed.barrier()

    blocks = _time_steps(cfg, trainer, data, sync)
    if world.is_main:
        (out / f"p{world_size}.json").write_text(json.dumps(blocks))
    torch.distributed.destroy_process_group()


def _no_ddp(cfg: ThroughputConfig) -> list[float]:
    """The baseline: this process, the estimator's own one-process trainer."""
    torch.set_num_threads(cfg.threads)
    config = _train_config(cfg)
    data = prepare_data(config).train
    pyro.clear_param_store()
    pyro.set_rng_seed(cfg.seed)
    vae = build_vae(config, data.shape[1]).to(data.device)
    trainer = make_objective(cfg.estimator, vae).make_trainer(1e-3)

    def sync():
        if data.device.type == "cuda":
            torch.cuda.synchronize()

    return _time_steps(cfg, trainer, data, sync)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the run ---------------------------------------------------------------------------------
def run(cfg: ThroughputConfig, *, log=print) -> dict:
    """Time every row; returns the JSON-ready report."""
    if cfg.device.startswith("cuda") and max(cfg.processes) > torch.cuda.device_count():
        raise SystemExit(f"{max(cfg.processes)} processes need as many GPUs (nccl), found "
                         f"{torch.cuda.device_count()}")
    load_before = os.getloadavg()
    rows = []

    def add(label, processes, blocks):
        seconds = statistics.median(blocks)
        rows.append({"processes": label, "world_size": processes,
                     "threads_per_process": max(1, cfg.threads // processes),
                     "seconds_per_block": blocks,
                     "images_per_second": cfg.steps * cfg.batch_size / seconds,
                     "ms_per_step": 1000 * seconds / cfg.steps})
        log(f"{label:>12} processes: {rows[-1]['images_per_second']:9.0f} images/s "
            f"({rows[-1]['ms_per_step']:.2f} ms per global step of {cfg.batch_size})")

    add("1 (no DDP)", 1, _no_ddp(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        for p in cfg.processes:
            mp.spawn(_rank, args=(p, _free_port(), cfg, Path(tmp)), nprocs=p)
            add(str(p), p, json.loads((Path(tmp) / f"p{p}.json").read_text()))
    base = rows[0]["images_per_second"]
    for row in rows:
        row["speedup_vs_no_ddp"] = row["images_per_second"] / base
    return {
        "benchmark": "distributed_throughput",
        "units": "images/s = global minibatch rows trained per second (higher is better)",
        "config": dataclasses.asdict(cfg),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "pyro": pyro.__version__,
                    "gpu": torch.cuda.get_device_name() if cfg.device.startswith("cuda")
                    else None,
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "rows": rows,
    }


def markdown(report: dict) -> str:
    cfg, machine = report["config"], report["machine"]
    lines = [
        f"Throughput of `{cfg['estimator']}` training steps, global minibatch "
        f"{cfg['batch_size']}, preset `{cfg['preset']}`, {cfg['device']} "
        f"({machine['gpu'] or str(machine['cpu_count']) + ' CPU cores'}; load average "
        f"{machine['load_average_before'][0]:.1f} before, {machine['load_average_after'][0]:.1f}"
        " after).",
        "",
        "| processes | threads each | images/s | ms per step | vs no DDP |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(f"| {row['processes']} | {row['threads_per_process']} | "
                     f"{row['images_per_second']:.0f} | {row['ms_per_step']:.2f} | "
                     f"{row['speedup_vs_no_ddp']:.2f}× |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run with a tiny network")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--estimator", default=ThroughputConfig.estimator)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=ThroughputConfig.batch_size)
    parser.add_argument("--threads", type=int, default=ThroughputConfig.threads)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    overrides = dict(QUICK) if args.quick else {}
    overrides.update(estimator=args.estimator, processes=tuple(args.processes),
                     batch_size=args.batch_size, threads=args.threads, device=args.device)
    if args.steps:
        overrides["steps"] = args.steps
    cfg = ThroughputConfig(**overrides)
    report = run(cfg, log=(lambda *a: None) if args.quiet else print)
    atomic_write_json(args.out / "distributed_throughput.json", report)
    atomic_write_bytes(args.out / "distributed_throughput.md", markdown(report).encode())
    if not args.quiet:
        print(f"wrote {args.out / 'distributed_throughput.json'} and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
