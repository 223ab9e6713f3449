"""The benchmarks' quick modes run and write finite numbers (nothing here judges speed), their
helpers compute what they say, and the overhead cuts behind them change no number:
:class:`~pyro_vae.estimators.JointAdam` steps exactly like ``pyro.optim.Adam`` and shares its
checkpoint format, and the JIT meanfield ELBO compiles once."""

import copy
import json
import math
import statistics

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch

from benchmarks import burda, common, compare_estimators, distributed_throughput, overhead
from pyro_vae import ESTIMATORS, VAE, ConfigError, make_objective
from pyro_vae.estimators import JointAdam, SVITrainer
from pyro_vae.training import burda_learning_rate
from tests.conftest import assert_close, binary_batch


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the benchmarks set their own thread count


def make_vae(**kwargs):
    return VAE(12, latent_dim=3, hidden_sizes=(16,), **kwargs)


def train(name, optim, base, x, *, steps=6, lr=1e-2, lr_changes=()):
    """``steps`` SVI steps of estimator ``name`` on a copy of ``base`` with ``optim``
    (None: the trainer's default, JointAdam); returns the losses, parameters and trainer."""
    pyro.clear_param_store()
    vae = copy.deepcopy(base)
    trainer = SVITrainer(make_objective(name, vae), lr, optim=optim)
    pyro.set_rng_seed(3)
    losses = []
    for step in range(steps):
        if step in lr_changes:
            trainer.set_lr(lr_changes[step])
        losses.append(trainer.step(x))
    return losses, {k: v.clone() for k, v in vae.state_dict().items()}, trainer


# --- JointAdam: the same numbers as pyro.optim.Adam --------------------------------------------
@pytest.mark.parametrize("name", ["meanfield", "trace", "iwae", "jit-meanfield", "jit-trace"])
def test_joint_adam_steps_exactly_like_pyro_adam(name):
    base, x = make_vae(), binary_batch(16, 12)
    lr_changes = {3: 3e-3}  # set_lr between steps, as the Burda schedule does
    ours = train(name, None, base, x, lr_changes=lr_changes)
    pyros = train(name, pyro.optim.Adam({"lr": 1e-2}), base, x, lr_changes=lr_changes)
    assert ours[0] == pyros[0]
    for key in pyros[1]:
        assert torch.equal(ours[1][key], pyros[1][key]), key
    assert isinstance(ours[2].optim, pyro.optim.PyroOptim)


def test_joint_adam_state_has_pyro_format_and_values():
    base, x = make_vae(), binary_batch(16, 12)
    ours = train("meanfield", None, base, x)[2].state_dict()
    pyros = train("meanfield", pyro.optim.Adam({"lr": 1e-2}), base, x)[2].state_dict()
    assert ours.keys() == pyros.keys()
    for name, state in pyros.items():
        assert ours[name]["param_groups"] == state["param_groups"]
        assert ours[name]["state"].keys() == state["state"].keys() == {0}
        for key, value in state["state"][0].items():
            assert torch.equal(ours[name]["state"][0][key], value), (name, key)


@pytest.mark.parametrize("first, second", [("joint", "pyro"), ("pyro", "joint")])
def test_checkpoint_moves_between_joint_and_pyro_adam(first, second):
    """Three steps with one optimizer, its state saved and loaded into the other for three
    more steps: the same parameters as six steps straight."""
    make = {"joint": lambda: None, "pyro": lambda: pyro.optim.Adam({"lr": 1e-2})}
    base, x = make_vae(), binary_batch(16, 12)
    straight = train("meanfield", make[first](), base, x, steps=6)[1]

    _, state, trainer = train("meanfield", make[first](), base, x, steps=3)
    saved = copy.deepcopy(trainer.state_dict())
    rng = torch.get_rng_state()
    pyro.clear_param_store()
    vae = copy.deepcopy(base)
    vae.load_state_dict(state)
    resumed = SVITrainer(make_objective("meanfield", vae), 1e-2, optim=make[second]())
    resumed.load_state_dict(saved)
    torch.set_rng_state(rng)
    for _ in range(3):
        resumed.step(x)
    for key, value in straight.items():
        assert torch.equal(vae.state_dict()[key], value), key


def test_joint_adam_matches_pyro_when_a_parameter_drops_out_of_the_trace():
    """Pyro keeps a zero gradient on a parameter once stepped, and so keeps moving it (Adam's
    momentum) while it gets no gradient; a parameter absent from a step's trace is not
    stepped. Both exactly as pyro.optim.Adam, on a model whose structure changes."""

    def model(x, use_b):
        a = pyro.param("a", torch.tensor([0.5, -0.2]))
        loc = a.sum()
        if use_b == 1:
            loc = loc + pyro.param("b", torch.tensor(0.3))
        elif use_b == 2:
            pyro.param("b", torch.tensor(0.3))  # in the trace, reached by no gradient
        pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    def guide(x, use_b):
        pass

    def run(optim):
        pyro.clear_param_store()
        svi = pyro.infer.SVI(model, guide, optim, pyro.infer.Trace_ELBO())
        for i, use_b in enumerate((1, 1, 2, 0, 2, 1)):
            if i == 3:  # a gradient from outside SVI, on a parameter the next step leaves out
                (2 * pyro.param("b")).backward()
            svi.step(torch.tensor(2.0), use_b)
        return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}

    ours, pyros = run(JointAdam({"lr": 0.1})), run(pyro.optim.Adam({"lr": 0.1}))
    assert ours.keys() == pyros.keys() == {"a", "b"}
    for key in ours:
        assert torch.equal(ours[key], pyros[key]), key


def test_joint_adam_before_any_parameter():
    optim = JointAdam({"lr": 0.1})
    optim([])  # a trace without parameters: nothing to step, as with pyro.optim.Adam
    assert optim.get_state() == {} == pyro.optim.Adam({"lr": 0.1}).get_state()


def test_joint_adam_rejects_per_parameter_arguments():
    with pytest.raises(ConfigError):
        JointAdam(lambda name: {"lr": 1e-3})


# --- JIT meanfield compiles once ---------------------------------------------------------------
def test_jit_meanfield_compiles_once_and_equals_meanfield():
    vae, x = make_vae(), binary_batch(8, 12)
    calls = []
    model = vae.model

    def counting_model(*args, **kwargs):
        calls.append(1)
        return model(*args, **kwargs)

    vae.model = counting_model
    objective = make_objective("jit-meanfield", vae)
    trainer = objective.make_trainer(1e-3)
    trainer.step(x)
    compiled, after_first = objective.elbo._differentiable_loss, len(calls)
    for _ in range(4):
        trainer.step(x)
    assert objective.elbo._differentiable_loss is compiled and len(compiled.compiled) == 1
    assert len(calls) == after_first  # Pyro 1.9.2's class re-traces the model at every step
    vae.model = model
    meanfield = make_objective("meanfield", vae)
    for seed in (1, 2):
        pyro.set_rng_seed(seed)
        jit_loss = objective.differentiable_loss(x)
        pyro.set_rng_seed(seed)
        assert_close(jit_loss, meanfield.differentiable_loss(x), rtol=1e-5)


# --- helpers -----------------------------------------------------------------------------------
def test_registry_specs_cover_every_estimator_and_k():
    specs = common.registry_specs((5, 50))
    assert {s.name for s in specs} == set(ESTIMATORS)
    for name, estimator in ESTIMATORS.items():
        ks = sorted(s.k for s in specs if s.name == name)
        assert ks == ([5, 50] if estimator.bound == "IWAE_K" else [1])
    assert common.parse_spec("iwae:50") == common.Spec("iwae", 50)
    assert common.parse_spec("iwae") == common.Spec("iwae", 5)
    assert common.Spec("iwae", 50).label == "iwae K=50"
    with pytest.raises(ConfigError):
        common.parse_spec("iwae:0")
    with pytest.raises(ConfigError):
        common.parse_spec("nonsense")


def test_time_interleaved_runs_blocks_in_turn():
    order = []
    steppers = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    timings = common.time_interleaved(steppers, blocks=3, steps_per_block={"a": 2, "b": 1},
                                      warmup=0)
    assert "".join(order) == "aab" + "baa" + "aab"
    for times in timings:  # wall-clock and CPU
        assert len(times["a"]) == 6 and len(times["b"]) == 3
        assert all(t >= 0 for t in times["a"] + times["b"])


def test_round_ratios_known_answer():
    times = {"base": [1.0, 1.0, 2.0, 2.0], "x": [1.5, 3.0]}
    ratios = common.round_ratios(times, {"base": 2, "x": 1}, "base")
    assert ratios["x"]["ratio"] == pytest.approx(2.25 / 1.5)
    assert ratios["x"]["round_ratio_median"] == pytest.approx(1.5)  # 1.5/1 and 3/2
    assert ratios["base"]["ratio"] == 1.0


def test_paired_difference_known_answer():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    d = common.paired_difference(a, a - torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert d["mean"] == pytest.approx(0.5)
    assert d["stderr"] == pytest.approx(math.sqrt(1 / 3) / 2)


def test_burda_setup_is_the_papers():
    config = burda.train_config(burda.BurdaConfig(), common.Spec("iwae", 50), burda.FULL_EPOCHS)
    assert (config.preset, config.batch_size, config.lr_schedule, config.lr) == (
        "burda", 20, "burda", 1e-3)
    assert config.num_particles == 50 and config.estimator == "iwae"
    assert burda.FULL_EPOCHS == sum(3**i for i in range(8))
    # pass i of 3^i epochs at 10^(-3 - i/7): the last pass starts at epoch 1093
    assert burda_learning_rate(1092, burda.FULL_EPOCHS) == pytest.approx(1e-3 * 10 ** (-6 / 7))
    assert burda_learning_rate(1093, burda.FULL_EPOCHS) == pytest.approx(1e-4)
    assert burda.PAPER[common.Spec("meanfield", 1)][1:] == (86.76, 19)
    assert burda.PAPER[common.Spec("iwae", 50)][1:] == (84.78, 25)
    # --batch-size changes the batch only: the schedule stays in epochs
    args = burda.parse_args(["--batch-size", "100", "--epochs", "780"])
    wide = burda.train_config(burda.BurdaConfig(batch_size=args.batch_size),
                              common.Spec("meanfield", 1), args.epochs)
    assert (wide.batch_size, wide.epochs, wide.lr_schedule, wide.lr) == (100, 780, "burda", 1e-3)
    # a short budget may give the paper's eight rates equal shares instead
    args = burda.parse_args(["--lr-schedule", "burda-even", "--lr", "2e-3"])
    even = burda.train_config(burda.BurdaConfig(lr_schedule=args.lr_schedule, lr=args.lr),
                              common.Spec("meanfield", 1), 80)
    assert (even.lr_schedule, even.lr, even.batch_size) == ("burda-even", 2e-3, 20)


# --- quick modes -------------------------------------------------------------------------------
def test_compare_quick_run(tmp_path, one_thread):
    assert compare_estimators.main(["--quick", "--quiet", "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "compare.json").read_text())
    labels = [r["label"] for r in document["results"]]
    assert labels[0] == "analytic"
    assert {"iwae K=5", "iwae K=50", "meanfield", "analytic"} <= set(labels)
    assert len(labels) == len(common.registry_specs((5, 50)))
    for r in document["results"]:
        assert r["epochs"] == len(r["curve"]) == document["config"]["epochs"]
        for key in ("train_bound", "test_elbo", "log_px", "log_px_stderr"):
            assert math.isfinite(r[key]), (r["label"], key)
        assert r["log_px"] < 0 and r["step"]["median_ms"] > 0
        assert 0 <= r["active_units"] <= document["config"]["latent_dim"]
    assert (tmp_path / "compare.png").stat().st_size > 0
    assert "| analytic |" in (tmp_path / "compare.md").read_text()


def test_overhead_quick_run(tmp_path, one_thread):
    assert overhead.main(["--quick", "--quiet", "--out", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "overhead.json").read_text())
    assert [r["batch_size"] for r in document["results"]] == list(overhead.QUICK["batch_sizes"])
    for r in document["results"]:
        assert r["steppers"]["analytic"]["ratio"] == 1.0
        assert {"meanfield", "meanfield [pyro Adam]", "meanfield [pyro ELBO]",
                "jit-meanfield"} <= set(r["steppers"])
        assert all(s["median_ms"] > 0 for s in r["steppers"].values())
    assert document["profiles"] and document["validation"]
    # every Pyro stepper's time is attributed to its own parts (Pyro's ELBO class or the
    # registry's subclass), once: no part is missing, none exceeds the step
    parts = document["profiles"][0]["ms_per_step"]
    for label in ("meanfield", "meanfield [pyro ELBO]", "meanfield [pyro Adam]"):
        part = {name.split(" (")[0]: ms for name, ms in parts[label].items()}
        assert 0 < part["ELBO from the traces"] < part["trace model and guide"] < part["total"]


def test_burda_quick_run_then_resume(tmp_path, one_thread):
    argv = ["--quick", "--quiet", "--out", str(tmp_path)]
    assert burda.main(argv) == 0
    document = json.loads((tmp_path / "burda.json").read_text())
    assert [r["label"] for r in document["results"]] == ["meanfield", "iwae K=5"]
    for r in document["results"]:
        assert r["nll"] == -r["log_px"] > 0 and math.isfinite(r["log_px_stderr"])
        assert r["paper"]["nll"] in (86.76, 85.54)
    # run again: the finished runs are resumed, not retrained, and evaluated the same way
    first = [r["nll"] for r in document["results"]]
    assert burda.main(argv) == 0
    again = json.loads((tmp_path / "burda.json").read_text())
    assert [r["nll"] for r in again["results"]] == first
    assert all(r["epochs_chosen"] == "from the checkpoint" for r in again["results"])


def test_distributed_throughput_quick_run(tmp_path, one_thread):
    """2 gloo ranks spawned on the loopback interface: every row is timed and consistent."""
    out = tmp_path / "dt"
    assert distributed_throughput.main(["--quick", "--quiet", "--out", str(out)]) == 0
    report = json.loads((out / "distributed_throughput.json").read_text())
    rows = report["rows"]
    assert [r["world_size"] for r in rows] == [1, 1, 2]
    for r in rows:
        seconds = statistics.median(r["seconds_per_block"])
        steps = report["config"]["steps"]
        assert r["ms_per_step"] == pytest.approx(1e3 * seconds / steps)
        assert r["images_per_second"] == pytest.approx(
            steps * report["config"]["batch_size"] / seconds)
    assert rows[0]["speedup_vs_no_ddp"] == 1.0
    assert (out / "distributed_throughput.md").read_text().count("\n| ") >= 4
