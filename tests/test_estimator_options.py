"""Estimator options (pyro_vae.objectives.options and the registry's entries): α of renyi, M of
miwae and piwae, β of ciwae, declared once with a default and a range, and carried the same way
by make_objective, TrainConfig (saved with every default, refused on resume when changed), the
command line (flags and help from the registry) and fit (the objective's label)."""

import json

import pytest

from pyro_vae import ESTIMATORS, VAE, Bound, ConfigError, make_objective
from pyro_vae.cli import build_parser
from pyro_vae.commands import train
from pyro_vae.config import TrainConfig, resumed_config
from pyro_vae.fit import fit
from pyro_vae.objectives import Estimator, Option, estimator_options, register


def test_labels_name_each_bound_with_its_parameters():
    assert Bound.VR_K.label(5, alpha=0.25) == "VR_5(alpha=0.25)"
    assert Bound.MIWAE.label(5, num_estimates=3) == "MIWAE_3x5"
    assert Bound.CIWAE.label(8, ciwae_beta=0.5) == "CIWAE_8(beta=0.5)"
    assert Bound.IWAE_MK.label(4, num_estimates=8) == "IWAE_32"
    assert Bound.IWAE_K.label(5, beta=0.5) == "beta-IWAE_5"


def test_every_option_is_declared_once_with_a_default_in_its_range():
    declared = {o.name: o for o in estimator_options()}
    assert set(declared) == {"alpha", "num_estimates", "ciwae_beta"}
    for option in declared.values():
        assert option.check(option.default) == option.default
        assert all(flag.startswith("-") for flag in option.flags)
    takers = {name: [o.name for o in e.options] for name, e in ESTIMATORS.items() if e.options}
    assert takers == {"renyi": ["alpha"], "miwae": ["num_estimates"],
                      "piwae": ["num_estimates"], "ciwae": ["ciwae_beta"]}
    assert declared["alpha"].describe() == "a number in (0, 1)"
    assert declared["ciwae_beta"].describe() == "a number in [0, 1]"
    assert declared["num_estimates"].describe() == "an integer >= 1"
    other_alpha = Option(name="alpha", flags=("--alpha",), metavar="A", kind=float, default=0.1,
                         low=0.0, high=1.0, help="another")
    with pytest.raises(ValueError, match="option 'alpha' differs"):
        register(Estimator(name="test-conflict", summary="", bound=Bound.ELBO,
                           build=lambda vae, k: None, options=(other_alpha,)))
    assert "test-conflict" not in ESTIMATORS and estimator_options() == tuple(declared.values())


def test_samples_per_datapoint_count_the_groups():
    """What the memory check multiplies: K, times M for MIWAE and PIWAE."""
    assert ESTIMATORS["miwae"].samples(5, {"num_estimates": 3}) == 15
    assert ESTIMATORS["piwae"].samples() == 10  # K = 5, M = 2 by default
    assert ESTIMATORS["renyi"].samples(7, {"alpha": 0.1}) == 7


def test_make_objective_takes_options_as_keywords_with_defaults():
    vae = VAE(12, latent_dim=3, hidden_sizes=(16,))
    assert make_objective("renyi", vae).options == {"alpha": 0.5}
    assert make_objective("renyi", vae, alpha=0.125).elbo.alpha == 0.125
    piwae = make_objective("piwae", vae, num_particles=3, num_estimates=4)
    assert (piwae.num_particles, piwae.elbo.num_particles, piwae.options) == (
        3, 12, {"num_estimates": 4})
    assert make_objective("ciwae", vae, ciwae_beta=1).elbo.ciwae_beta == 1.0
    with pytest.raises(ConfigError, match="the trace estimator takes no option 'num_estimates' "
                                          r"\(--num-estimates is for miwae and piwae\)"):
        make_objective("trace", vae, num_estimates=2)


def test_config_saves_every_default_and_refuses_a_changed_option_on_resume():
    config = TrainConfig(estimator="renyi").validate()
    saved = config.to_dict()
    assert saved["estimator_options"] == {"alpha": 0.5}
    assert TrainConfig.from_dict(saved).to_dict() == saved
    assert TrainConfig().to_dict()["estimator_options"] == {}
    # the default given explicitly is no change; another value is
    same = resumed_config(config, {"estimator_options": {"alpha": 0.5}, "epochs": 20})
    assert same.epochs == 20 and same.to_dict()["estimator_options"] == {"alpha": 0.5}
    with pytest.raises(ConfigError, match=r"estimator_options \{'alpha': 0.3\} \(saved: "
                                          r"\{'alpha': 0.5\}\)"):
        resumed_config(config, {"estimator_options": {"alpha": 0.3}})
    for options, match in (({"alpha": 1.0}, "alpha"), ({"num_estimates": 2}, "no option"),
                           ({"alpha": "0.5"}, "alpha")):
        with pytest.raises(ConfigError, match=match):
            TrainConfig(estimator="renyi", estimator_options=options).validate()


def test_command_line_flags_and_help_come_from_the_registry():
    parser = build_parser()
    args = parser.parse_args(["train", "--estimator", "miwae", "-M", "4", "-K", "3"])
    assert train._given(args) == {"estimator": "miwae", "num_particles": 3,
                                  "estimator_options": {"num_estimates": 4}}
    assert "estimator_options" not in train._given(parser.parse_args(["train"]))
    help_text = " ".join(parser._subparsers._group_actions[0].choices["train"]
                         .format_help().split())
    for option in estimator_options():
        assert all(flag in help_text for flag in option.flags)
    assert "miwae, piwae: M, the independent IWAE_K estimates" in help_text
    assert "piwae IWAE_MK PIWAE(M, K)" in help_text and "--num-estimates (default 2)" in help_text


def test_fit_trains_with_the_options_and_names_the_objective_with_them(tmp_path):
    config = TrainConfig(estimator="piwae", num_particles=2, estimator_options={
        "num_estimates": 3}, train_size=64, test_size=16, hidden_sizes=(8,), latent_dim=2,
        batch_size=32, epochs=1)
    result = fit(config, tmp_path, progress=False, log=lambda *a: None)
    assert result.history[0]["train_objective"] == "IWAE_6"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["estimator_options"] == {"num_estimates": 3}
    again = fit(TrainConfig.from_dict({**metrics["config"], "epochs": 2}), tmp_path,
                resume=True, progress=False, log=lambda *a: None)
    assert [r["train_objective"] for r in again.history] == ["IWAE_6", "IWAE_6"]
