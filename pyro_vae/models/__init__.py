"""The models: the VAE as a Pyro program, the interface every model implements, and their parts.

=========================  ==================================================================
:mod:`.interface`          :class:`VAEModel`, :class:`LayeredModel`, :class:`Capabilities`
:mod:`.vae`                :class:`VAE`: L ≥ 1 stochastic layers, Gaussian or IAF guides
:mod:`.networks`           MLP encoders and decoders
:mod:`.presets`            the architecture presets, by name
:mod:`.conv`               convolutional encoder and decoder (``--preset conv``)
:mod:`.likelihoods`        p(x|z) as objects, with their support checks
:mod:`.flows`              inverse autoregressive flows
:mod:`.linear_gaussian`    the linear-Gaussian model: log p(x), posteriors, bounds exactly
=========================  ==================================================================
"""

from pyro_vae.models.flows import FLOWS, InverseAutoregressiveFlow, make_flow
from pyro_vae.models.interface import Capabilities, GuidePath, LayeredModel, VAEModel
from pyro_vae.models.likelihoods import LIKELIHOODS, Likelihood, make_likelihood
from pyro_vae.models.presets import PRESETS, Architecture, get_preset
from pyro_vae.models.vae import VAE

__all__ = ["FLOWS", "LIKELIHOODS", "PRESETS", "VAE", "Architecture", "Capabilities", "GuidePath",
           "InverseAutoregressiveFlow", "LayeredModel", "Likelihood", "VAEModel", "get_preset",
           "make_flow", "make_likelihood"]
