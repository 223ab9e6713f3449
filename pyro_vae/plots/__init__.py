"""Pictures (PNG) of a trained VAE and of its run.

=====================  ========================================================
:mod:`.images`         reconstructions, prior samples, latent manifold and embedding
:mod:`.curves`         learning curves, log p(x) against K, Pareto k̂ histogram
:mod:`.identity`       the ELBO's decomposition, q(z|x) against p(z|x), AIS's path
:mod:`.run`            every picture of a run folder (``pyro-vae train`` and ``plot``)
:mod:`.canvas`         matplotlib plumbing (Agg canvas, atomic PNG files)
=====================  ========================================================
"""

from pyro_vae.plots.curves import (
    plot_comparison,
    plot_learning_curves,
    plot_log_px_vs_k,
    plot_pareto_k,
)
from pyro_vae.plots.identity import (
    plot_ais_diagnostics,
    plot_elbo_decomposition,
    plot_posterior_vs_guide,
    posterior_and_guide_on_grid,
)
from pyro_vae.plots.images import (
    LABEL_NAMES,
    PriorSample,
    decoder_mean,
    image_grid,
    normal_quantile_grid,
    pca_2d,
    plot_images,
    plot_latent_embedding,
    plot_latent_manifold,
    plot_prior_samples,
    plot_reconstructions,
    sample_prior,
)
from pyro_vae.plots.run import evaluation_figures, write_run_figures

__all__ = [
    "LABEL_NAMES",
    "PriorSample",
    "decoder_mean",
    "evaluation_figures",
    "image_grid",
    "normal_quantile_grid",
    "pca_2d",
    "plot_ais_diagnostics",
    "plot_comparison",
    "plot_elbo_decomposition",
    "plot_images",
    "plot_latent_embedding",
    "plot_latent_manifold",
    "plot_learning_curves",
    "plot_log_px_vs_k",
    "plot_pareto_k",
    "plot_posterior_vs_guide",
    "plot_prior_samples",
    "plot_reconstructions",
    "posterior_and_guide_on_grid",
    "sample_prior",
    "write_run_figures",
]
