"""Data-parallel training with torch.distributed: 2 gloo processes on the loopback interface.

The 2-process runs happen once per module (a fixture spawns them and saves what they
computed); the tests compare those numbers with a one-process computation of the same global
minibatch: plain autograd over both shards, no DDP, torch Adam.
"""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pyro_vae import ESTIMATORS, VAE, make_objective
from pyro_vae.build import load_data
from pyro_vae.config import TrainConfig
from pyro_vae.distributed import DistributedError, derive_seed, init_process_group, shard
from pyro_vae.evaluation import Execution, estimate_log_px, mean_elbo
from pyro_vae.evaluation.runner import run_blocks
from pyro_vae.fit import fit
from pyro_vae.models.likelihoods import Gaussian
from pyro_vae.runs import RunFolder, load_checkpoint
from pyro_vae.trainer import Trainer
from tests.conftest import assert_close, binary_batch

WORLD_SIZE = 2
SEED = 5  # the trainers' noise seed
LR = 0.01
LOG_PX_K = 64  # importance samples per datapoint in the log p(x) test
TIMEOUT = 60.0  # seconds a collective waits
N_DATA = 100  # num_data for the scaled case: scale 100/8 on a global batch of 8
# Global minibatches of one run: two of 8 rows (4 per rank) and one of 1 row (rank 1 empty).
BATCH_ROWS = [(0, 8), (8, 16), (16, 17)]
TINY = dict(train_size=256, test_size=64, hidden_sizes=(16,), latent_dim=3, batch_size=64,
            eval_batch_size=20)

# (estimator, likelihood, num_data): every registered estimator, and the cases that exercise
# the learned likelihood scale and the num_data scale (linear, and inside IWAE's log-mean-exp).
CASES = [(name, "bernoulli", None) for name in ESTIMATORS] + [
    ("analytic", "gaussian-learned", None),
    ("meanfield", "gaussian-learned", None),
    ("analytic", "bernoulli", N_DATA),
    ("iwae", "bernoulli", N_DATA),
]
CASE_IDS = [f"{e}-{lik}" + ("-scaled" if n else "") for e, lik, n in CASES]


def make_vae(likelihood):
    torch.manual_seed(0)
    if likelihood == "gaussian-learned":
        return VAE(12, latent_dim=3, hidden_sizes=(16,),
                   likelihood=Gaussian(0.5, learn_scale=True, x_dim=12))
    return VAE(12, latent_dim=3, hidden_sizes=(16,), likelihood=likelihood)


def make_data(likelihood):
    x = binary_batch(17, 12, seed=3)
    return x if likelihood == "bernoulli" else 0.1 + 0.8 * x


def warm_up(objective, x):
    """Compile the JIT estimators for the shard sizes (4 and 1 rows) before the seeded steps:
    Pyro's compilation runs the program more than once, drawing extra random numbers."""
    for rows in (4, 1):
        objective.differentiable_loss(x[:rows])


def rendezvous_store() -> dist.TCPStore:
    """The rendezvous server, listening on a port the OS chose and held open until the ranks
    have joined: no race for a port that was free a moment ago."""
    return dist.TCPStore("127.0.0.1", 0, WORLD_SIZE, is_master=True, wait_for_workers=False)


def join(rank, port, timeout):
    # TORCHELASTIC_USE_AGENT_STORE: every rank is a client of the store the parent holds, as
    # under torchrun's agent, instead of rank 0 binding the port itself.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank),
                      TORCHELASTIC_USE_AGENT_STORE="True")
    torch.set_num_threads(1)
    pyro.enable_validation(True)
    return init_process_group(device="cpu", timeout=timeout)


def _worker(rank, port, out_dir):
    """One rank: a few trainer steps for every case, then fit() runs; rank r saves its
    results to out_dir/rank{r}.pt."""
    world = join(rank, port, TIMEOUT)
    results = {"steps": {}}
    for estimator, likelihood, num_data in CASES:
        pyro.clear_param_store()
        vae = make_vae(likelihood)
        x = make_data(likelihood)
        objective = make_objective(estimator, vae)
        warm_up(objective, x)
        trainer = Trainer(objective, LR, world=world, seed=SEED)
        losses, params = [], []
        for start, stop in BATCH_ROWS:
            losses.append(trainer.step(x[start:stop], num_data=num_data))
            params.append({k: v.detach().clone() for k, v in vae.named_parameters()})
        results["steps"][(estimator, likelihood, num_data)] = (losses, params)

    # The test ELBO: split across ranks, and computed by this rank alone.
    vae = make_vae("bernoulli")
    x = binary_batch(45, 12, seed=4)
    results["mean_elbo"] = (mean_elbo(vae, x, execution=Execution(block_size=10, seed=2,
                                                                  world=world)),
                            mean_elbo(vae, x, execution=Execution(block_size=10, seed=2)))
    # The IWAE_K estimate of log p(x), split across ranks and alone.
    results["log_px"] = [estimate_log_px(vae, x, num_samples=LOG_PX_K, execution=Execution(
        seed=2, block_size=10, world=w)) for w in (world, None)]

    # fit(): 2 epochs straight, and 1 epoch then resumed for a second.
    config = TrainConfig(**TINY, epochs=2, estimator="meanfield")
    straight = fit(config, out_dir / "straight", world=world, progress=False)
    fit(TrainConfig(**TINY, epochs=1, estimator="meanfield"), out_dir / "resumed", world=world,
        progress=False)
    resumed = fit(config, out_dir / "resumed", resume=True, world=world, progress=False)
    results["fit"] = (straight.history, resumed.history,
                      {k: v.clone() for k, v in straight.vae.state_dict().items()},
                      {k: v.clone() for k, v in resumed.vae.state_dict().items()})

    # Rank 1 dies (no clean-up, like a crash) after both built a trainer; rank 0's next
    # step must fail with a message, not hang.
    trainer = Trainer(make_objective("analytic", make_vae("bernoulli")), LR, world=world)
    torch.save(results, out_dir / f"rank{rank}.pt")
    if rank == 1:
        os._exit(0)
    start = time.perf_counter()
    try:
        trainer.step(make_data("bernoulli"))
        results["dead_rank"] = ("no error", time.perf_counter() - start)
    except DistributedError as e:
        results["dead_rank"] = (str(e), time.perf_counter() - start)
    torch.save(results, out_dir / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    store = rendezvous_store()
    mp.spawn(_worker, args=(store.port, out_dir), nprocs=WORLD_SIZE)
    del store
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]
    return out_dir, ranks


def one_process_steps(estimator, likelihood, num_data):
    """The same steps in one process: the loss of each global minibatch is the sum of its two
    halves' losses, each drawn with the noise seed of the rank that holds it."""
    pyro.clear_param_store()
    vae = make_vae(likelihood)
    x = make_data(likelihood)
    objective = make_objective(estimator, vae)
    warm_up(objective, x)
    optim = torch.optim.Adam(vae.parameters(), lr=LR)
    losses, params = [], []
    for step, (start, stop) in enumerate(BATCH_ROWS):
        half = start + (stop - start + 1) // 2  # rank 0 holds the larger half
        optim.zero_grad()
        total = 0.0
        for rank, (a, b) in enumerate([(start, half), (half, stop)]):
            if b == a:
                continue
            torch.manual_seed(derive_seed(SEED, step, rank))
            shard_num_data = None if num_data is None else num_data * (b - a) // (stop - start)
            total = total + objective.differentiable_loss(x[a:b], num_data=shard_num_data)
        total.backward()
        optim.step()
        losses.append(float(total.detach()))
        params.append({k: v.detach().clone() for k, v in vae.named_parameters()})
    return losses, params


@pytest.mark.integration
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_distributed_step_equals_one_process_step(two_ranks, case):
    _, ranks = two_ranks
    expected_losses, expected_params = one_process_steps(*case)
    for rank, result in enumerate(ranks):
        losses, params = result["steps"][case]
        assert_close(losses, expected_losses, rtol=1e-6, atol=1e-5, msg=f"rank {rank} loss")
        for step, (got, want) in enumerate(zip(params, expected_params, strict=True)):
            assert got.keys() == want.keys()
            for name in want:
                assert_close(got[name], want[name], rtol=0, atol=1e-6,
                             msg=f"rank {rank}, step {step}: {name}")


@pytest.mark.integration
def test_learned_likelihood_scale_is_trained(two_ranks):
    """The Gaussian's log-scale moves, and (test above) by the all-reduced gradient."""
    _, ranks = two_ranks
    _, params = ranks[0]["steps"][("analytic", "gaussian-learned", None)]
    initial = make_vae("gaussian-learned").likelihood.log_scale.detach()
    # Adam's first step moves every parameter with a non-zero gradient by lr, to 1e-5.
    assert_close((params[0]["likelihood.log_scale"] - initial).abs(), LR, rtol=1e-3)


@pytest.mark.integration
def test_distributed_test_elbo_equals_one_process(two_ranks):
    _, ranks = two_ranks
    for result in ranks:
        split, alone = result["mean_elbo"]
        assert split == alone  # bit for bit: each batch has its own seed
    assert ranks[0]["mean_elbo"] == ranks[1]["mean_elbo"]


@pytest.mark.integration
def test_distributed_log_px_equals_one_process(two_ranks):
    """Same seed, same chunks: the same IWAE_K estimates whichever rank computed them."""
    _, ranks = two_ranks
    alone_here = estimate_log_px(make_vae("bernoulli"), binary_batch(45, 12, seed=4),
                                 num_samples=LOG_PX_K,
                                 execution=Execution(seed=2, block_size=10))
    for result in ranks:
        split, alone = result["log_px"]
        assert torch.equal(split.log_px, alone.log_px)
        assert torch.equal(split.log_px_mc_stderr, alone.log_px_mc_stderr)
        assert (split.mean, split.mean_mc_stderr, split.data_stderr) == (
            alone.mean, alone.mean_mc_stderr, alone.data_stderr)
        assert_close(split.log_px, alone_here.log_px, rtol=1e-6, atol=1e-5)
        assert split.log_px.shape == (45,) and split.num_samples == LOG_PX_K


def test_log_px_does_not_depend_on_the_worker_threads():
    """Each block draws from its own seed: one thread or two, the same numbers."""
    vae, x = make_vae("bernoulli"), binary_batch(30, 12, seed=4)
    one = estimate_log_px(vae, x, num_samples=40,
                          execution=Execution(seed=7, block_size=8, workers=1))
    two = estimate_log_px(vae, x, num_samples=40,
                          execution=Execution(seed=7, block_size=8, workers=2))
    assert torch.equal(one.log_px, two.log_px)
    assert torch.equal(one.log_px_mc_stderr, two.log_px_mc_stderr)
    # A lower bound in expectation: below log 1 = 0 for binary data, above the ELBO's scale.
    assert -12 * math.log(2) - 5 < one.mean < 0


def test_run_blocks_seeds_by_block_not_by_order():
    """One process: a block's values depend on the block's index only, so any split agrees,
    on one thread or two, and the caller's random stream is left as it was."""
    def compute(xb, generator, bar):
        return {"u": torch.rand(xb[0].shape[0], generator=generator),
                "g": torch.rand(xb[0].shape[0], 2)}  # torch's global generator, reseeded

    x = (torch.zeros(25, 1),)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    values = run_blocks(compute, x, {"u": 0, "g": 2}, Execution(seed=1), block=10)
    assert torch.equal(torch.rand(3), before)
    assert values["u"].shape == (25,) and values["u"].dtype == torch.float64
    assert values["g"].shape == (25, 2)
    for i, (start, stop) in enumerate(((0, 10), (10, 20), (20, 25))):
        g = torch.Generator().manual_seed(derive_seed(1, i))
        assert_close(values["u"][start:stop], torch.rand(stop - start, generator=g), rtol=0,
                     atol=0)
    threaded = run_blocks(lambda xb, g, bar: {"u": torch.rand(xb[0].shape[0], generator=g)},
                          x, {"u": 0}, Execution(seed=1, workers=2), block=10, threaded=True)
    assert torch.equal(threaded["u"], values["u"])


@pytest.mark.integration
def test_fit_resume_equals_straight_run(two_ranks):
    out_dir, ranks = two_ranks
    straight, resumed, straight_state, resumed_state = ranks[0]["fit"]
    assert [r["epoch"] for r in resumed] == [1, 2]
    for a, b in zip(straight, resumed, strict=True):
        assert a["processes"] == b["processes"] == WORLD_SIZE
        assert_close(a["train_objective_nats"], b["train_objective_nats"], rtol=1e-6)
        assert_close(a["test_elbo"], b["test_elbo"], rtol=1e-6)
    for name in straight_state:
        assert_close(resumed_state[name], straight_state[name], rtol=0, atol=1e-6, msg=name)
    # Both ranks hold the same model; rank 0 wrote it.
    for name, value in ranks[1]["fit"][2].items():
        assert_close(value, straight_state[name], rtol=0, atol=0, msg=name)
    ckpt = load_checkpoint(out_dir / "straight")
    assert ckpt.epoch == 2
    for name, value in ckpt.model_state.items():
        assert_close(value, straight_state[name], rtol=0, atol=0, msg=name)


@pytest.mark.integration
def test_a_data_parallel_run_resumes_in_one_process(two_ranks, tmp_path):
    """One optimizer-state format for both: a Pyro estimator's run trained by 2 ranks goes on
    in one process, from the saved Adam moments and step count."""
    out_dir, _ = two_ranks
    run = tmp_path / "run"
    import shutil

    shutil.copytree(out_dir / "straight", run)
    saved = load_checkpoint(run)
    steps = saved.trainer_state["steps"]
    assert steps == 2 * math.ceil(TINY["train_size"] / TINY["batch_size"])
    result = fit(TrainConfig(**TINY, epochs=3, estimator="meanfield"), run, resume=True,
                 progress=False, log=lambda *a: None)
    assert result.history[:2] == saved.history and result.history[2]["processes"] == 1
    assert math.isfinite(result.history[2]["test_elbo"])
    assert load_checkpoint(run).trainer_state["steps"] == steps + steps // 2


def test_shard_splits_rows_disjointly():
    class W:
        world_size = 3

        def __init__(self, rank):
            self.rank = rank

    x = torch.arange(8)
    parts = [shard(x, W(r)) for r in range(3)]
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert [len(shard(torch.arange(2), W(r))) for r in range(3)] == [1, 1, 0]


def test_derive_seed_separates_streams():
    seeds = {derive_seed(s, i, r) for s in range(3) for i in range(3) for r in range(3)}
    assert len(seeds) == 27 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(1, 2) == derive_seed(1, 2)


@pytest.mark.integration
def test_a_dead_rank_ends_the_run_with_a_message(two_ranks):
    _, ranks = two_ranks
    message, seconds = ranks[0]["dead_rank"]
    assert message.startswith("rank 0 of 2: summing the minibatch loss failed")
    assert "Another process has probably died" in message
    assert seconds < TIMEOUT  # the peer's socket closed, or the timeout: not a hang


@pytest.mark.integration
def test_torchrun_train_writes_one_set_of_outputs(tmp_path):
    """The command line under torchrun: 2 processes, 2 epochs; rank 0 alone prints and
    writes, and the test ELBO it reports is that of the saved model in one process."""
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--standalone",  # rendezvous on a port the OS picks: no race for a free port
        "-m", "pyro_vae", "train", "--train-size", "512", "--test-size", "128",
        "--epochs", "2", "--hidden-sizes", "32", "--latent-dim", "4", "--quiet",
        "--no-plots", "--out", str(out),
    ]
    # PYTHONFAULTHANDLER: a rank killed by a signal prints where each of its threads was.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-6000:]}"
    assert {p.name for p in out.iterdir()} == {"checkpoint.pt", "checkpoint.prev.pt",
                                               "metrics.json", "run.lock"}
    assert proc.stdout.count("done: test ELBO") == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2]
    assert all(r["processes"] == 2 for r in metrics["epochs"])
    vae, checkpoint = RunFolder(out).load_vae()
    config = checkpoint.config
    data = load_data(config)
    assert_close(mean_elbo(vae, data.test, execution=Execution(block_size=config.eval_batch_size)),
                 metrics["epochs"][-1]["test_elbo"], rtol=1e-6)
