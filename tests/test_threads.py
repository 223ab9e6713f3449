"""The thread policy (pyro_vae.threads): it keeps the faster thread count as timed, follows a
change in the load, drops a count that loses by far after one step, switches only between
counts that agree bit for bit; and a run's metrics and weights do not depend on its choices."""

import os

import pytest
import torch

from pyro_vae import threads as threads_module
from pyro_vae.config import TrainConfig
from pyro_vae.errors import ConfigError
from pyro_vae.fit import fit
from pyro_vae.threads import ThreadPolicy, default_threads, set_threads

TIMING_KEYS = {"epoch_seconds", "eval_seconds", "wall_seconds", "threads"}


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    set_threads(None)
    torch.set_num_threads(threads)


class Clock:
    """A clock that the fake steps advance: the policy's choices, not the machine's load,
    decide these tests (a real sleep of 1.2 ms against 2 ms swaps places on a busy machine)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(threads_module, "time", fake)
    return fake


def run_steps(policy, costs, n, clock):
    """``n`` steps whose seconds depend on the thread count (``costs(step)``: {threads: s}),
    on the fake ``clock``; the thread count of each step."""
    used = []
    for i in range(n):
        with policy.step():
            used.append(torch.get_num_threads())
            clock.now += costs(i)[used[-1]]
    return used


def test_the_policy_keeps_the_faster_count_and_follows_the_load(clock):
    """Two threads faster, then (the load arrives at step 150) ten times slower: the policy
    runs most steps at the faster count in each phase."""
    policy = ThreadPolicy((2, 1), hold_seconds=0.05, max_hold_seconds=0.2)
    used = run_steps(policy, lambda i: {1: 0.002, 2: 0.0012} if i < 150 else
                     {1: 0.002, 2: 0.02}, 300, clock)
    assert used[40:150].count(2) / 110 > 0.8
    assert used[200:].count(1) / 100 > 0.9
    winners = [min(m, key=m.get) for _, m in policy.history]
    assert winners[0] == 2 and winners[-1] == 1
    assert policy.describe().startswith("1 thread (1: ")


def test_a_count_that_loses_by_far_is_timed_once(clock):
    """Held at one thread, a probe of two threads that take 20 × as long costs one step."""
    policy = ThreadPolicy((2, 1), probe_steps=5, hold_seconds=0.03, max_hold_seconds=0.03)
    costs = {1: 0.001, 2: 0.02}
    run_steps(policy, lambda i: costs, 40, clock)  # first probe: two warm-up steps at each count
    probes = len(policy.history)
    used = run_steps(policy, lambda i: costs, 200, clock)
    assert len(policy.history) > probes + 3  # it probed again, several times
    assert used.count(2) <= len(policy.history) - probes + 1


def test_hold_doubles_while_the_same_count_wins(clock):
    policy = ThreadPolicy((2, 1), hold_seconds=0.01, max_hold_seconds=0.04)
    run_steps(policy, lambda i: {1: 0.001, 2: 0.003}, 200, clock)
    assert policy.hold == 0.04


def test_counts_that_disagree_in_their_bits_are_not_switched_between():
    policy = ThreadPolicy((2, 1))
    assert policy.agree(lambda: [torch.ones(3)]) and policy.choices == (2, 1)
    assert not policy.agree(lambda: [torch.tensor(float(torch.get_num_threads()))])
    assert policy.choices == (2,) and not policy.active
    with policy.step():
        assert torch.get_num_threads() == 2


def test_agree_leaves_the_random_state_alone():
    policy = ThreadPolicy((2, 1))
    torch.manual_seed(5)
    policy.agree(lambda: [torch.randn(3)])
    after = torch.randn(3)
    torch.manual_seed(5)
    assert torch.equal(torch.randn(3), after)


def test_the_policy_is_off_where_the_count_was_fixed(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    assert ThreadPolicy.default() is not None
    set_threads(1)
    assert torch.get_num_threads() == 1 and ThreadPolicy.default() is None
    set_threads(None)
    torch.set_num_threads(2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert ThreadPolicy.default() is None and default_threads() == 2
    assert ThreadPolicy.choices_for(4) == (4, 2, 1) and ThreadPolicy.choices_for(3) == (3, 1)


@pytest.mark.parametrize("bad", ["fast", 0, 2.5, True])
def test_fit_refuses_a_bad_threads_argument(bad):
    with pytest.raises(ConfigError, match="threads"):
        fit(TrainConfig(train_size=64, test_size=32, epochs=1), threads=bad, progress=False,
            log=lambda *a: None)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_matrix_products_give_the_same_bits_on_one_thread_and_on_two():
    """Importing pyro_vae asks MKL for its strict reproducibility (MKL_CBWR): without it, on a
    loaded machine, linear layers of batch 16–64 gave other bits on 2 threads than on 1."""
    import pyro_vae  # noqa: F401

    assert os.environ["MKL_CBWR"] == "AUTO,STRICT"
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    try:
        for batch in (16, 32, 64, 100, 128):
            x, w = torch.randn(batch, 784, generator=g), torch.randn(400, 784, generator=g)
            out = []
            for n in (1, 2):
                torch.set_num_threads(n)
                out.append(torch.nn.functional.linear(x, w))
            assert torch.equal(*out), batch
    finally:
        torch.set_num_threads(threads)


def without_timings(history):
    return [{k: v for k, v in record.items() if k not in TIMING_KEYS} for record in history]


@pytest.mark.parametrize("options", [{}, {"preset": "burda2", "estimator": "dreg",
                                          "num_particles": 3}, {"flow": "iaf"}],
                         ids=["default", "two layers, dreg", "iaf"])
def test_a_runs_numbers_do_not_depend_on_the_thread_counts_chosen(options):
    """One thread, two threads, and a policy that switches between them at every step (no
    hold): the same metrics, bit for bit, and the same weights."""
    config = TrainConfig(train_size=512, test_size=200, batch_size=64, epochs=2, seed=3,
                         **options)
    runs = {}
    for name, threads in (("one", 1), ("two", 2),
                          ("switching", ThreadPolicy((2, 1), probe_steps=1, hold_seconds=0.0))):
        result = fit(config, threads=threads, progress=False, log=lambda *a: None)
        runs[name] = (without_timings(result.history), result.vae.state_dict())
        if name == "switching":
            assert len(threads.history) >= 3 and threads.active  # it switched, and agreed
    for name in ("two", "switching"):
        assert runs[name][0] == runs["one"][0], name
        for key, value in runs["one"][1].items():
            assert torch.equal(runs[name][1][key], value), (name, key)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_train_records_the_policys_choice(tmp_path):
    import json

    from pyro_vae.cli import main

    env = os.environ.pop("OMP_NUM_THREADS", None)
    torch.set_num_threads(2)  # torch's default on two cores (the suite runs on one)
    try:
        assert main(["train", "--epochs", "1", "--train-size", "256", "--test-size", "64",
                     "--out", str(tmp_path / "a"), "--quiet", "--no-plots"]) == 0
        assert main(["train", "--epochs", "1", "--train-size", "256", "--test-size", "64",
                     "--out", str(tmp_path / "b"), "--quiet", "--no-plots", "--threads",
                     "1"]) == 0
    finally:
        if env is not None:
            os.environ["OMP_NUM_THREADS"] = env
    chosen = [json.loads((tmp_path / r / "metrics.json").read_text())["epochs"][0]["threads"]
              for r in ("a", "b")]
    assert chosen[0] in ("1 thread", "2 threads") and chosen[1] == 1  # too few steps to time
