"""Networks and presets."""

import pytest
import torch
from torch import nn

from pyro_vae import PRESETS, VAE, ConfigError
from pyro_vae.models.networks import GaussianEncoder, MLPDecoder, mlp
from tests.conftest import assert_close


def linear_sizes(module):
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_burda_preset_is_784_200_200_50_tanh():
    vae = VAE.from_preset("burda", 784)
    assert linear_sizes(vae.encoder) == [(784, 200), (200, 200), (200, 50), (200, 50)]
    assert linear_sizes(vae.decoder) == [(50, 200), (200, 200), (200, 784)]
    assert all(isinstance(m, nn.Tanh) for m in vae.encoder.body if not isinstance(m, nn.Linear))


def test_pyro_preset_is_784_400_50_softplus():
    vae = VAE.from_preset("pyro", 784)
    assert linear_sizes(vae.encoder) == [(784, 400), (400, 50), (400, 50)]
    assert linear_sizes(vae.decoder) == [(50, 400), (400, 784)]
    assert isinstance(vae.encoder.body[1], nn.Softplus)


def test_presets_follow_the_data_size_and_overrides():
    vae = VAE.from_preset("burda", 30, latent_dim=4)
    assert linear_sizes(vae.decoder)[-1] == (200, 30) and vae.latent_dim == 4
    assert set(PRESETS) == {"pyro", "burda", "burda2"}


def test_output_bias_is_the_logit_of_the_training_mean():
    vae = VAE(6, latent_dim=2, hidden_sizes=(4,))
    mean = torch.tensor([0.1, 0.5, 0.9, 0.3, 0.0, 1.0])
    vae.init_output_bias(mean)
    p = mean.clamp(1e-3, 1 - 1e-3)
    assert_close(vae.decoder.out.bias, torch.log(p / (1 - p)), rtol=1e-6)
    # with zero weights the decoder reproduces the mean exactly
    with torch.no_grad():
        vae.decoder.out.weight.zero_()
    assert_close(torch.sigmoid(vae.decoder(torch.randn(3, 2))), p.expand(3, 6), rtol=1e-5)


def test_encoder_scale_is_positive_and_shapes_pass_particles_through():
    enc = GaussianEncoder(5, 3, (7,), "relu")
    loc, scale = enc(torch.randn(4, 5))
    assert loc.shape == scale.shape == (4, 3) and (scale > 0).all()
    dec = MLPDecoder(3, 5, (7, 8), "elu", context_dim=2)
    out = dec(torch.randn(6, 4, 3), torch.randn(4, 2))  # (K, B, z) with (B, c) context
    assert out.shape == (6, 4, 5)


def test_bad_architecture_arguments():
    with pytest.raises(ConfigError, match="known activations"):
        mlp(3, (4,), "sigmoidish")
    with pytest.raises(ConfigError, match="positive"):
        mlp(3, (0,), "tanh")
    with pytest.raises(ConfigError, match="known presets: burda, burda2, pyro"):
        VAE.from_preset("resnet", 784)
