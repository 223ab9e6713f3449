"""benchmarks/: every script runs in quick mode both as ``python benchmarks/NAME.py`` and as
``python -m benchmarks.NAME`` and writes the numbers and structure it promises (nothing here
judges speed); the shared helpers compute what they say; and the steppers the benchmarks
compare compute the same numbers, so that their times compare like with like."""

import copy
import importlib
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.infer
import pytest
import torch

from benchmarks import burda, common, compare_estimators, overhead
from pyro_vae import ESTIMATORS, VAE, ConfigError, make_objective
from pyro_vae.build import load_data
from pyro_vae.objectives import Bound
from pyro_vae.schedules import burda_learning_rate
from pyro_vae.trainer import Trainer
from tests.conftest import assert_close, binary_batch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("overhead", "compare_estimators", "burda", "gradient_snr", "distributed_throughput",
           "threads", "evaluation_speed")


def make_vae(**kwargs):
    return VAE(12, latent_dim=3, hidden_sizes=(16,), **kwargs)


# --- the steppers: Pyro's SVI and the package's Trainer compute the same -----------------------
def train(make_trainer, base, x, *, steps=4, lr=1e-2):
    """``steps`` steps of ``make_trainer(vae, lr)`` on a copy of ``base`` from one seed; the
    losses and the parameters."""
    pyro.clear_param_store()
    vae = copy.deepcopy(base)
    trainer = make_trainer(vae, lr)
    pyro.set_rng_seed(3)
    losses = [trainer.step(x) for _ in range(steps)]
    return losses, {k: v.detach().clone() for k, v in vae.state_dict().items()}


@pytest.mark.parametrize("name", ["meanfield", "trace", "iwae", "dreg", "jit-meanfield",
                                  "jit-trace"])
def test_pyro_svi_steps_like_the_trainer(name):
    """The overhead benchmark times Pyro's SVI with pyro.optim.Adam against the package's
    Trainer: the same parameters after every step, so only the time differs."""
    base, x = make_vae(), binary_batch(16, 12)
    svi_losses, svi = train(lambda v, lr: common.PyroSVI(make_objective(name, v), lr), base, x)
    ours_losses, ours = train(lambda v, lr: Trainer(make_objective(name, v), lr), base, x)
    assert_close(svi_losses, ours_losses, rtol=1e-6)
    for key in ours:
        assert_close(svi[key], ours[key], rtol=1e-5, atol=1e-7, msg=key)
    assert svi_losses[-1] < svi_losses[0]  # and both train


def test_pyro_svi_with_pyros_own_elbo_class_steps_like_the_registrys():
    base, x = make_vae(), binary_batch(16, 12)
    own = train(lambda v, lr: common.PyroSVI(
        make_objective("meanfield", v), lr,
        elbo=pyro.infer.TraceMeanField_ELBO(max_plate_nesting=1)), base, x)
    registry = train(lambda v, lr: common.PyroSVI(make_objective("meanfield", v), lr), base, x)
    assert own[0] == registry[0]
    for key in own[1]:
        assert torch.equal(own[1][key], registry[1][key]), key


def test_pyro_svi_refuses_a_hand_written_loss():
    with pytest.raises(ConfigError, match="not a Pyro ELBO"):
        common.PyroSVI(make_objective("analytic", make_vae()), 1e-3)


def test_jit_meanfield_compiles_once_where_pyros_class_recompiles():
    """What the overhead table's jit-meanfield rows measure: the registry's class traces the
    model once, Pyro 1.9.2's at every step."""
    x = binary_batch(8, 12)

    def model_calls(make_trainer):
        pyro.clear_param_store()  # the two VAEs share their parameters' names
        vae = make_vae()
        calls = []
        model = vae.model

        def counting_model(*args, **kwargs):
            calls.append(1)
            return model(*args, **kwargs)

        vae.model = counting_model
        trainer = make_trainer(make_objective("jit-meanfield", vae))
        trainer.step(x)
        after_first = len(calls)
        for _ in range(4):
            trainer.step(x)
        return len(calls) - after_first

    assert model_calls(lambda o: Trainer(o, 1e-3)) == 0
    pyros = pyro.infer.JitTraceMeanField_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)
    assert model_calls(lambda o: common.PyroSVI(o, 1e-3, elbo=pyros)) >= 4


def test_identical_vaes_start_equal_and_train_apart():
    vaes = common.identical_vaes(["a", "b"], 12, seed=0, latent_dim=3, hidden_sizes=(16,))
    a, b = vaes["a"].state_dict(), vaes["b"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = binary_batch(16, 12)
    common.make_trainer(common.Spec("meanfield", 1), vaes["a"], 1e-2).step(x)
    assert not torch.equal(vaes["a"].state_dict()["encoders.0.loc.weight"],
                           b["encoders.0.loc.weight"])


# --- helpers -------------------------------------------------------------------------------------
def test_registry_specs_cover_every_estimator_and_k():
    specs = common.registry_specs((5, 50))
    assert {s.name for s in specs} == set(ESTIMATORS)
    for name, estimator in ESTIMATORS.items():
        ks = sorted(s.k for s in specs if s.name == name)
        assert ks == ([5, 50] if estimator.bound is not Bound.ELBO else [1])
    assert [s.k for s in common.registry_specs((1, 5)) if s.name == "rws"] == [5]  # K ≥ 2
    assert common.parse_spec("iwae:50") == common.Spec("iwae", 50)
    assert common.parse_spec("iwae") == common.Spec("iwae", 5)
    assert common.Spec("iwae", 50).label == "iwae K=50"
    assert common.Spec("dreg", 5).bound is Bound.IWAE_K
    spec = common.parse_spec("miwae:8,num_estimates=4")
    assert spec == common.Spec("miwae", 8, (("num_estimates", 4),))
    assert (spec.label, spec.slug) == ("miwae K=8 num_estimates=4", "miwae-8-num_estimates=4")
    assert common.parse_spec("renyi,alpha=0.2").all_options == {"alpha": 0.2}
    assert common.Spec("ciwae", 5).all_options == {"ciwae_beta": 0.5}
    for bad in ("iwae:0", "nonsense", "renyi:5,alpha=1", "renyi:5,alpha=x", "iwae,alpha=0.5",
                "rws:1"):
        with pytest.raises(ConfigError):
            common.parse_spec(bad)


def test_time_interleaved_runs_blocks_in_turn():
    order = []
    steppers = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    timings = common.time_interleaved(steppers, blocks=3, steps_per_block={"a": 2, "b": 1},
                                      warmup=0)
    assert "".join(order) == "aab" + "baa" + "aab"
    for times in timings:  # wall-clock and CPU
        assert len(times["a"]) == 6 and len(times["b"]) == 3
        assert all(t >= 0 for t in times["a"] + times["b"])


def test_measure_steps_counts_rounds_and_compares_with_the_baseline():
    calls = {"a": 0, "b": 0}
    steppers = {name: (lambda name=name: calls.__setitem__(name, calls[name] + 1))
                for name in calls}
    times = common.measure_steps(steppers, baseline="a", block_seconds=1.0,
                                 budget_seconds=60.0, max_rounds=3, warmup=2)
    assert times.steps_per_block == {"a": 50, "b": 50}  # instant steps: the most per block
    assert times.rounds == 3
    assert calls == {"a": 2 + 1 + 3 * 50, "b": 2 + 1 + 3 * 50}  # warm-up, probe, rounds
    assert times.summary["a"]["ratio"] == 1.0 and times.summary["a"]["steps"] == 150


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


def test_evaluate_log_px_is_a_bound_below_zero_with_its_errors():
    vae, x = make_vae(), binary_batch(20, 12)
    result = common.evaluate_log_px(vae, x, 50, seed=0)
    per_datapoint = result.pop("log_px_per_datapoint")
    assert per_datapoint.shape == (20,)
    assert result["log_px_mean"] == pytest.approx(float(per_datapoint.mean()))
    assert result["log_px_data_stderr"] == pytest.approx(
        float(per_datapoint.std()) / math.sqrt(20))
    assert -12 * math.log(2) - 5 < result["log_px_mean"] < 0  # 12 Bernoulli pixels
    assert 0 < result["log_px_mean_mc_stderr"] < result["log_px_data_stderr"]
    assert vae.training  # evaluation leaves the VAE in training mode
    assert json.dumps(result)  # every other field is plain data


def test_seconds_per_epoch_probes_fits_steps_and_leaves_no_parameters():
    """What burda --minutes plans with: one epoch's steps at the probed speed, plus the test
    ELBO; a positive time, and Pyro's param store empty again."""
    config = burda.train_config(burda.BurdaConfig(train_size=64, eval_size=32, batch_size=16),
                                common.Spec("meanfield", 1), 1)
    data = load_data(config)
    seconds = common.seconds_per_epoch(config, data, probe_seconds=0.0)
    assert math.isfinite(seconds) and seconds > 0
    assert not list(pyro.get_param_store().keys())


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


def test_compare_estimators_trains_on_the_data_set_it_is_given():
    assert compare_estimators.parse_args([]).dataset == "mnist"
    config = compare_estimators.CompareConfig(dataset="fashion-mnist")
    assert compare_estimators.train_config(config, common.Spec("meanfield", 1), 2).dataset == \
        "fashion-mnist"


def test_overhead_variants_name_what_they_step():
    labels = {v.label: v for v in overhead.variants(("meanfield", "jit-meanfield"),
                                                    pyro_twins=True)}
    assert list(labels) == ["analytic", "meanfield", "meanfield [Pyro SVI]",
                            "meanfield [Pyro's ELBO class]", "jit-meanfield",
                            "jit-meanfield [Pyro SVI]"]
    vae = make_vae()
    assert isinstance(labels["meanfield"].trainer(vae, 1e-3), Trainer)
    svi = labels["jit-meanfield [Pyro SVI]"].trainer(vae, 1e-3)
    assert type(svi.elbo) is pyro.infer.JitTraceMeanField_ELBO  # Pyro's, recompiling
    own = labels["meanfield [Pyro's ELBO class]"].trainer(vae, 1e-3)
    assert type(own.objective.elbo) is pyro.infer.TraceMeanField_ELBO
    assert [v.label for v in overhead.variants(("meanfield",), pyro_twins=False)] == [
        "analytic", "meanfield"]


def test_the_input_checks_are_timed_inside_the_steps_that_call_them(monkeypatch):
    config = overhead.OverheadConfig(**overhead.QUICK)
    images = torch.bernoulli(torch.full((64, 784), 0.3))
    for name in ("analytic", "meanfield"):
        timed = overhead.input_checks_in_step(config, images, 8, name, seconds=0.2)
        assert timed["steps"] >= 10 and 0 < timed["check_us"] < 1e3 * timed["step_ms"]
        assert_close(timed["share"], timed["check_us"] / (1e3 * timed["step_ms"]), rtol=1e-9)
    # with the checks gone from the model, nothing is timed: the wrappers time those calls only
    plain = overhead.Variant("meanfield", "meanfield", input_checks=False)
    monkeypatch.setattr(overhead, "Variant", lambda label, estimator: plain)
    timed = overhead.input_checks_in_step(config, images, 8, "meanfield", seconds=0.1)
    assert timed["check_us"] == 0


def test_the_paired_ratio_steps_with_the_checks_on_in_half_the_blocks_and_restores_them(
        monkeypatch):
    config = overhead.OverheadConfig(**overhead.QUICK)
    images = torch.bernoulli(torch.full((64, 784), 0.3))
    calls = [0]
    real = VAE._check_x

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(VAE, "_check_x", counted)
    made = []
    monkeypatch.setattr(overhead, "identical_vaes", lambda *a, **k: made.append(
        common.identical_vaes(*a, **k)) or made[-1])
    for name in ("analytic", "meanfield"):  # one full check per step: meanfield's guide's
        calls[0] = 0                        # serves its model
        paired = overhead.input_checks_ratio(config, images, 8, name, seconds=0.05,
                                             steps_per_block=3)
        assert paired["rounds"] >= 4 and paired["steps_per_block"] == 3
        assert calls[0] == 5 + 3 * paired["rounds"]  # 5 warm-up steps, then the on blocks
        vae = made[-1]["paired"]
        assert "_check_input" not in vae.__dict__ and "check_data" not in vae.__dict__
        assert paired["ratio_low"] <= paired["ratio"] <= paired["ratio_high"]


def test_ratio_interval_is_the_median_with_a_bootstrap_interval_around_it():
    assert overhead.ratio_interval([1.02] * 9) == {"ratio": 1.02, "ratio_low": 1.02,
                                                   "ratio_high": 1.02}
    ratios = [1.0, 1.01, 1.02, 1.03, 1.04] * 4 + [1.5]
    out = overhead.ratio_interval(ratios)
    assert out["ratio"] == 1.02  # the median, which one outlying round does not move
    assert 1.0 <= out["ratio_low"] < 1.02 < out["ratio_high"] <= 1.04
    assert overhead.ratio_interval(ratios) == out  # seeded: the same interval each time


# --- every script, both ways of running it, in quick mode ----------------------------------------
def run_script(name: str, form: str, out: Path, *options: str) -> str:
    """``python benchmarks/NAME.py`` (form "file") or ``python -m benchmarks.NAME`` (form
    "module") from the repository root, in quick mode; its standard output."""
    target = [f"benchmarks/{name}.py"] if form == "file" else ["-m", f"benchmarks.{name}"]
    result = subprocess.run(
        [sys.executable, *target, "--quick", *([] if name == "threads" else ["--threads", "1"]),
         "--out", str(out), *options],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def read(out: Path, stem: str) -> tuple[dict, str]:
    document = json.loads((out / f"{stem}.json").read_text())
    assert document["machine"]["load_average_1_5_15_min"] is not None
    assert document["machine"]["torch_threads"] == 1
    return document, (out / f"{stem}.md").read_text()


def check_overhead(out: Path) -> None:
    document, table = read(out, "overhead")
    assert [r["batch_size"] for r in document["results"]] == list(overhead.QUICK["batch_sizes"])
    for r in document["results"]:
        assert r["steppers"]["analytic"]["ratio"] == 1.0
        assert set(r["steppers"]) == {v.label for v in overhead.variants(
            overhead.OverheadConfig.estimators, pyro_twins=True)} | {overhead.FLOOR}
        # the matrix products alone take less than the whole step they belong to
        assert r["steppers"][overhead.FLOOR]["median_ms"] < r["steppers"]["analytic"]["median_ms"]
        assert all(s["median_ms"] > 0 and s["q1_ms"] <= s["median_ms"] <= s["q3_ms"]
                   for s in r["steppers"].values())
        assert r["rounds"] >= 2
    # every meanfield stepper's time is attributed to its own parts, once: no part is
    # missing, none exceeds the step; only Pyro's SVI pays for pyro.optim's wrapper
    parts = document["profiles"][0]["ms_per_step"]
    for label in ("meanfield", "meanfield [Pyro's ELBO class]", "meanfield [Pyro SVI]"):
        part = {name.split(" (")[0]: ms for name, ms in parts[label].items()}
        # parts nested in a step (cProfile's cumulative times): never more than the step; how
        # the parts compare with each other depends on the machine's load, so it is not tested
        assert 0 < part["ELBO from the traces"] < part["total"]
        assert 0 < part["trace model and guide"] < part["total"]
        assert 0 < part["zeroing gradients"] < part["total"]
        assert (part["pyro.optim wrapper"] > 0) == (label == "meanfield [Pyro SVI]")
    assert set(document["validation"][0]["steppers"]) == {
        "analytic", "analytic, validated every step", "analytic, no input checks", "meanfield",
        "meanfield, validated every step", "meanfield, no input checks"}
    assert "The model's input checks cost meanfield " in table
    assert "| meanfield [Pyro SVI] |" in table and "Command: `python -m benchmarks.overhead" \
        in table


def check_compare_estimators(out: Path) -> None:
    document, table = read(out, "compare")
    labels = [r["label"] for r in document["results"]]
    assert labels[0] == "analytic"
    assert sorted(labels) == sorted(s.label for s in common.registry_specs((5, 50)))
    for r in document["results"]:
        assert r["epochs"] == len(r["curve"]) == document["config"]["epochs"]
        for key in ("train_objective_nats", "test_elbo", "log_px_mean", "log_px_mean_mc_stderr"):
            assert math.isfinite(r[key]), (r["label"], key)
        assert r["train_objective"] == Bound(r["bound"]).label(r["K"], **r["options"])
        assert r["log_px_mean"] < 0 and r["step"]["median_ms"] > 0
        assert 0 <= r["active_units"] <= document["config"]["latent_dim"]
    analytic = document["results"][0]
    assert analytic["log_px_minus_analytic"] == {"mean": 0.0, "stderr": 0.0}
    # meanfield trains like analytic sample for sample: the same log p(x), to float error
    meanfield = next(r for r in document["results"] if r["label"] == "meanfield")
    assert abs(meanfield["log_px_minus_analytic"]["mean"]) < 1e-3
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| analytic | ELBO |" in table and "| iwae K=50 | IWAE_50 |" in table


def check_burda(out: Path) -> dict:
    document, table = read(out, "burda")
    assert [r["label"] for r in document["results"]] == ["meanfield", "iwae K=5"]
    for r in document["results"]:
        assert r["nll"] == -r["log_px_mean"] > 0 and math.isfinite(r["log_px_mean_mc_stderr"])
        assert r["paper"]["nll"] in (86.76, 85.54)
        assert (out / r["estimator"] if r["K"] == 1 else out / f"iwae-{r['K']}").is_dir()
    assert "| iwae K=5 | 2 | 20 | burda from 0.001 |" in table
    return document


def check_gradient_snr(out: Path) -> None:
    document, table = read(out, "gradient_snr")
    assert document["config"]["estimators"] == list(ESTIMATORS)
    assert len(document["results"]) == (len(document["settings"]) * len(ESTIMATORS)
                                        * len(document["config"]["ks"]))
    assert all(math.isfinite(r["encoder"]["snr"]) for r in document["results"]
               if "refused" not in r)
    for name in ESTIMATORS:
        assert table.count(f"| {name} |") == len(document["settings"])


def check_distributed_throughput(out: Path) -> None:
    """2 gloo ranks spawned on the loopback interface: every row timed and consistent."""
    report, table = read(out, "distributed_throughput")
    rows = report["rows"]
    assert [r["processes"] for r in rows] == ["1, Pyro SVI", "1, no DDP", "2 DDP"]
    assert [r["world_size"] for r in rows] == [1, 1, 2]
    assert [r["threads_per_process"] for r in rows] == [1, 1, 1]
    steps, batch = report["config"]["steps"], report["config"]["batch_size"]
    for r in rows:
        seconds = statistics.median(r["seconds_per_block"])
        assert len(r["seconds_per_block"]) == report["config"]["repeats"]
        assert r["ms_per_step"] == pytest.approx(1e3 * seconds / steps)
        assert r["images_per_second"] == pytest.approx(steps * batch / seconds)
    assert rows[1]["speedup_vs_no_ddp"] == 1.0
    assert table.count("\n| ") == 1 + len(rows)  # the header's separator, then one per row


def check_threads(out: Path) -> None:
    """One condition in quick mode: the three settings, the same test ELBO in each (the
    thread counts do not change the numbers), the default's ratio to the better fixed one."""
    document = json.loads((out / "threads.json").read_text())
    (condition,) = document["conditions"].values()
    cells = condition["cells"]
    assert list(cells) == ["1 thread", f"{os.cpu_count()} threads", "default"]
    assert len({v for c in cells.values() for v in c["test_elbo"]}) == 1
    best = min(c["epoch_seconds"] for k, c in cells.items() if k != "default")
    assert condition["default_over_best"] == pytest.approx(
        cells["default"]["epoch_seconds"] / best)


def check_evaluation_speed(out: Path) -> None:
    document, table = read(out, "evaluation_speed")
    for run in document["runs"].values():
        floor = sum(run["floor_flops_per_second"]) / 2
        assert run["rate_over_floor"] == pytest.approx(run["flops_per_second"] / floor)
        assert run["seconds_per_10000"] == pytest.approx(run["seconds"] * 10000 / run["images"])
        assert run["log_px_mean"] < 0
    assert table.count("\n| ") == 2  # a row a run, after the header


CHECKS = {"overhead": check_overhead, "compare_estimators": check_compare_estimators,
          "gradient_snr": check_gradient_snr,
          "distributed_throughput": check_distributed_throughput,
          "threads": check_threads, "evaluation_speed": check_evaluation_speed}
OPTIONS = {"gradient_snr": ("--model", "ppca", "--ppca-settings", "perturbation")}


@pytest.mark.integration
@pytest.mark.parametrize("name", [s for s in SCRIPTS if s != "burda"])
def test_quick_run(tmp_path, name):
    """Each script's quick mode, as a module (``tests/test_examples.py`` runs each as a file,
    for its help, from the repository's root with nothing on ``PYTHONPATH``)."""
    run_script(name, "module", tmp_path, "--quiet", *OPTIONS.get(name, ()))
    CHECKS[name](tmp_path)


@pytest.mark.integration
def test_burda_quick_run_as_a_file_then_resumed_as_a_module(tmp_path):
    """The second run finds the finished runs, resumes them without training and evaluates
    them the same way: the same NLLs."""
    run_script("burda", "file", tmp_path, "--quiet")
    first = check_burda(tmp_path)
    run_script("burda", "module", tmp_path, "--quiet")
    again = check_burda(tmp_path)
    assert [r["nll"] for r in again["results"]] == [r["nll"] for r in first["results"]]
    assert all(r["epochs_chosen"] == "from the checkpoint" for r in again["results"])


def test_output_logs_and_shows_progress_unless_quiet():
    """Progress comes as a bar on a terminal and as lines in logs: mode "auto"."""
    assert common.output(overhead.parse_args([])).progress == "auto"
    quiet = common.output(overhead.parse_args(["--quiet"]))
    assert quiet.progress == "off" and quiet.log("anything") is None
    assert common.fit_progress("auto") is None and common.fit_progress("off") is False



@pytest.mark.parametrize("name, options, named", [
    ("burda", ["--estimators", "meanfield", "dreg:5", "--flow", "iaf"], "dreg estimator cannot"),
    ("burda", ["--estimators", "nonsense:5"], "unknown estimator 'nonsense'"),
    ("burda", ["--minutes", "0"], "--minutes: expected a positive number"),
    ("burda", ["--flow", "iaf", "--flow-layers", "100000"], "needs about"),
    ("compare_estimators", ["--estimators", "renyi:5,alpha=2"], "alpha"),
    ("compare_estimators", ["--seconds", "nan"], "--seconds: expected a positive number"),
    ("compare_estimators", ["--dataset", "cifar"], "unknown data set 'cifar'"),
    ("gradient_snr", ["--ks", "0"], "--ks: expected a positive integer"),
    ("log_likelihood", ["--images", "-1"], "--images: expected a positive integer"),
    ("overhead", ["--batch-sizes", "0"], "--batch-sizes: expected a positive integer"),
    ("distributed_throughput", ["--threads", "0"], "--threads: expected an integer in [1, "),
])
def test_a_bad_option_is_one_line_and_exit_status_2_before_any_work(tmp_path, name, options,
                                                                   named, capsys, monkeypatch):
    """A fuzz run found tracebacks for an estimator that cannot train the
    model and a run started for --minutes 0; every script now refuses such input at once,
    as pyro-vae does, and writes nothing (burda: not even the meanfield row before dreg).
    Run in-process, through the same ``run_main`` as ``python -m benchmarks.NAME``."""
    monkeypatch.setenv("PYRO_VAE_MEMORY_LIMIT_MB", "2000")
    module = importlib.import_module(f"benchmarks.{name}")
    argv = ["--quick", "--threads", "1", "--out", str(tmp_path / "out"), *options]
    try:
        status = common.run_main(lambda: module.main(argv), f"benchmarks.{name}")
    except SystemExit as e:  # argparse
        status = e.code
    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], lines
    assert not (tmp_path / "out").exists()
