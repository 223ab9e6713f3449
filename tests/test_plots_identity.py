"""The pictures of the identity (pyro_vae.plots.identity): the bars of the ELBO's decomposition
end where the identity says, the posterior and the guide on the grid are the closed-form
Gaussians, AIS's panels show the numbers given; ``pyro-vae evaluate`` draws them (and
``--no-plots`` does not)."""

import json

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from torch.distributions import MultivariateNormal

from pyro_vae.cli import main
from pyro_vae.models.linear_gaussian import (
    exact_posterior,
    guide_joint,
    sample_model,
)
from pyro_vae.plots import identity
from pyro_vae.plots.identity import (
    plot_ais_diagnostics,
    plot_elbo_decomposition,
    plot_posterior_vs_guide,
    posterior_and_guide_on_grid,
)
from tests.ppca import ppca_vae
from tests.test_linear_gaussian import posterior_ppca_vae


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save, kept (and written as usual)."""
    figures = []
    save = identity.save

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)

    monkeypatch.setattr(identity, "save", keep)
    return figures


def bar_ends(ax):
    """(left, right) of each bar, in drawing order."""
    return [(p.get_x(), p.get_x() + p.get_width()) for p in ax.patches]


@pytest.mark.parametrize("gaps", [False, True])
def test_the_decompositions_bars_end_where_the_identity_says(tmp_path, drawn, gaps):
    """Each image's lanes: 0 → E_q[log p(x|z)]; from there by −KL(q ‖ p(z)) to the ELBO; from
    the ELBO up to log p(x) (by KL(q ‖ p(z|x)), or by the amortization then the
    approximation gap); the last row is the mean over all the data, not only the drawn."""
    rng = np.random.default_rng(0)
    n = 5
    loglik, kl, kl_post = -rng.uniform(50, 90, n), rng.uniform(5, 25, n), rng.uniform(1, 4, n)
    per = {"expected_loglik": loglik, "kl_to_prior": kl, "log_px": loglik - kl + kl_post}
    if gaps:
        per.update(amortization=0.3 * kl_post, approximation=0.7 * kl_post)
    path = plot_elbo_decomposition(per, tmp_path / "d.png", images=3)
    assert imread(path).ndim == 3
    (ax,) = drawn[0].axes
    lanes = 4 if gaps else 3
    ends = bar_ends(ax)
    assert len(ends) == 4 * lanes  # three images and the mean
    rows = [{k: v[i] for k, v in per.items()} for i in range(3)]
    rows.append({k: float(np.mean(v)) for k, v in per.items()})
    for r, bars in zip(rows, [ends[i * lanes:(i + 1) * lanes] for i in range(4)], strict=True):
        elbo = r["expected_loglik"] - r["kl_to_prior"]
        np.testing.assert_allclose(bars[0], (0, r["expected_loglik"]), rtol=1e-12)
        np.testing.assert_allclose(bars[1], (r["expected_loglik"], elbo), rtol=1e-12)
        np.testing.assert_allclose((bars[2][0], bars[-1][1]), (elbo, r["log_px"]), rtol=1e-12)
    assert [t.get_text() for t in ax.get_yticklabels()][-1] == "mean of 5"


def test_on_the_grid_an_exact_guide_is_the_posterior_and_both_are_the_closed_form():
    """pPCA with the encoder at the exact posterior: log q(z|x) = log p(z|x) at every grid
    point, and both are the closed-form Gaussian posterior (normalized on the same grid)."""
    params, vae = posterior_ppca_vae()
    x = sample_model(params, 1, torch.Generator().manual_seed(3))
    a, b, log_post, log_q = posterior_and_guide_on_grid(vae, x, steps=40)
    loc, cov = exact_posterior(x, params)
    grid = torch.stack(torch.meshgrid(a, b, indexing="xy"), -1)  # (40, 40, 2)
    closed = MultivariateNormal(loc[0], cov).log_prob(grid)
    closed = closed - torch.logsumexp(closed.flatten(), 0)
    torch.testing.assert_close(log_post, closed, rtol=0, atol=1e-9)
    torch.testing.assert_close(log_q, closed, rtol=0, atol=1e-9)


def test_on_the_grid_a_guide_off_the_posterior_is_its_own_gaussian():
    """The encoder moved off the posterior: log q on the grid is the encoder's Gaussian, and it
    differs from the posterior by more than rounding."""
    _, vae, x = ppca_vae(seed=2)
    x = x[:1]
    a, b, log_post, log_q = posterior_and_guide_on_grid(vae, x, steps=30)
    loc, cov = guide_joint(vae, x)
    grid = torch.stack(torch.meshgrid(a, b, indexing="xy"), -1)
    closed = MultivariateNormal(loc[0], cov).log_prob(grid)
    torch.testing.assert_close(log_q, closed - torch.logsumexp(closed.flatten(), 0), rtol=0,
                               atol=1e-9)
    assert (log_q - log_post).abs().max() > 0.1
    # the grid spans the guide's mass: four standard deviations each way, or more
    sd = cov.diagonal().sqrt()
    assert a[0] < loc[0, 0] - 3 * sd[0] and a[-1] > loc[0, 0] + 3 * sd[0]
    assert b[0] < loc[0, 1] - 3 * sd[1] and b[-1] > loc[0, 1] + 3 * sd[1]


def test_the_grid_spans_a_posterior_far_from_the_guide():
    """The encoder moved 8 units off in each coordinate: the grid spans the exact posterior's
    mass as well as the guide's (it spanned the guide's alone, and drew the posterior cut off
    at an edge), and on it the posterior is the closed-form one."""
    params, vae, x = ppca_vae(seed=2)
    x = x[:1]
    with torch.no_grad():
        vae.encoder.c.add_(8.0)
    a, b, log_post, _ = posterior_and_guide_on_grid(vae, x, steps=60)
    for loc, cov in (exact_posterior(x, params), guide_joint(vae, x)):
        sd = cov.diagonal().sqrt()
        assert a[0] < loc[0, 0] - 3 * sd[0] and a[-1] > loc[0, 0] + 3 * sd[0]
        assert b[0] < loc[0, 1] - 3 * sd[1] and b[-1] > loc[0, 1] + 3 * sd[1]
    loc, cov = exact_posterior(x, params)
    grid = torch.stack(torch.meshgrid(a, b, indexing="xy"), -1)
    closed = MultivariateNormal(loc[0], cov).log_prob(grid)
    torch.testing.assert_close(log_post, closed - torch.logsumexp(closed.flatten(), 0), rtol=0,
                               atol=1e-9)


def test_the_posterior_picture_has_one_panel_per_image(tmp_path, drawn):
    params, vae = posterior_ppca_vae()
    x = sample_model(params, 6, torch.Generator().manual_seed(0))
    plot_posterior_vs_guide(vae, x, tmp_path / "p.png", images=3, steps=20)
    assert [ax.get_title() for ax in drawn[0].axes] == ["image 0", "image 1", "image 2"]


def test_ais_diagnostics_draw_the_path_and_is_against_ais(tmp_path, drawn):
    by_step = {"beta": [0.0, 0.5, 1.0], "acceptance": [None, 0.6, 0.7],
               "step_size": [None, 0.1, 0.05], "target": 0.65}
    is_vs_ais = ([-90.0, -80.0], [-89.0, -79.5])
    path = plot_ais_diagnostics(by_step, tmp_path / "a.png", is_vs_ais=is_vs_ais)
    assert imread(path).ndim == 3
    acc, step, scatter = drawn[0].axes
    np.testing.assert_array_equal(acc.lines[0].get_ydata(), [np.nan, 0.6, 0.7])
    assert acc.lines[1].get_ydata()[0] == 0.65  # the target
    np.testing.assert_array_equal(step.lines[0].get_ydata(), [np.nan, 0.1, 0.05])
    assert scatter.get_title() == "AIS − IS: +0.75 nats on average"
    plot_ais_diagnostics(by_step, tmp_path / "b.png")
    assert len(drawn[1].axes) == 2  # no IS at hand: no third panel


TINY = ["--train-size", "128", "--test-size", "16", "--hidden-sizes", "16", "--latent-dim",
        "2", "--quiet", "--no-plots"]


@pytest.mark.integration
def test_evaluate_draws_the_identity_and_no_plots_draws_nothing(tmp_path):
    """IS: the decomposition and (a two-dimensional latent space) the posterior against the
    guide; AIS after IS: AIS's path with IS against AIS. The decomposition's numbers are the
    report's: E_q[log p(x|z)] − KL(q ‖ p(z)) is the ELBO, below log p(x) on average."""
    run = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--out", str(run), *TINY]) == 0
    assert main(["evaluate", str(run), "-K", "50", "--quiet"]) == 0
    assert {p.name for p in run.glob("*.png")} == {"elbo_decomposition.png",
                                                   "posterior_vs_guide.png"}
    report = json.loads((run / "evaluation.json").read_text())
    d = report["elbo_decomposition"]
    assert d["expected_loglik"] - d["kl_to_prior"] == pytest.approx(d["elbo"], abs=1e-9)
    assert d["log_px"] - d["elbo"] == pytest.approx(d["kl_to_posterior"], abs=1e-9)
    assert d["kl_to_posterior"] > 0
    assert main(["evaluate", str(run), "--ais-steps", "5", "--chains", "2", "--quiet"]) == 0
    assert (run / "ais_diagnostics.png").is_file()
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    assert main(["evaluate", str(run), "-K", "20", "--quiet", "--no-plots", "-o",
                 str(quiet / "e.json")]) == 0
    assert [p.name for p in quiet.iterdir()] == ["e.json"]
