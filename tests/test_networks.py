"""Networks and presets."""

import pytest
import torch
from torch import nn

from pyro_vae import PRESETS, VAE, ConfigError
from pyro_vae.models.networks import GaussianEncoder, MLPDecoder, mlp, output_numel
from pyro_vae.models.presets import get_preset
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
    assert set(PRESETS) == {"pyro", "burda", "burda2", "conv"}


def test_presets_give_sizes_per_stochastic_layer():
    assert PRESETS["pyro"].hidden_sizes == ((400,),) and PRESETS["pyro"].latent_dims == (50,)
    assert PRESETS["burda"].hidden_sizes == ((200, 200),)
    assert PRESETS["burda2"].latent_dims == (100, 50)
    assert PRESETS["burda2"].hidden_sizes == ((200, 200), (100, 100))
    assert [PRESETS[n].stochastic_layers for n in ("pyro", "burda", "burda2")] == [1, 1, 2]
    assert get_preset("pyro").describe() == "x-400-50"
    assert get_preset("burda").summary == "x-200-200-50 tanh"
    assert get_preset("burda2").summary == "x-200-200-100-100-100-50 tanh, 2 stochastic layers"
    for name in ("pyro", "burda", "burda2"):  # what the built model has
        arch, vae = PRESETS[name], VAE.from_preset(name, 20)
        assert vae.latent_dims == arch.latent_dims, name
        encoders = [[m.out_features for m in e.body if isinstance(m, nn.Linear)]
                    for e in vae.encoders]
        assert tuple(map(tuple, encoders)) == arch.hidden_sizes, name
        assert isinstance(vae.encoder.body[1], type(nn.Tanh() if arch.activation == "tanh"
                                                     else nn.Softplus())), name


def test_features_and_heads_are_the_encoder_split_in_two():
    enc = GaussianEncoder(5, 3, (7, 6), "tanh", context_dim=2)
    x, c = torch.randn(4, 5), torch.randn(4, 2)
    h = enc.features(x, c)
    assert h.shape == (4, 6) and enc.features_dim == 6
    loc, scale = enc.heads(h)
    expected_loc, expected_scale = enc(x, c)
    assert torch.equal(loc, expected_loc) and torch.equal(scale, expected_scale)
    assert_close(scale, enc.log_scale(h).exp(), rtol=0, atol=0)
    assert GaussianEncoder(5, 3, (), "tanh").features_dim == 5  # no hidden layer: x itself


def test_output_numel_counts_the_outputs_of_the_layers_with_parameters():
    dec = MLPDecoder(3, 5, (7, 8), "elu", context_dim=2)
    assert output_numel(dec, torch.zeros(1, 3), torch.zeros(1, 2)) == 7 + 8 + 5
    enc = GaussianEncoder(5, 3, (7,), "relu")
    assert output_numel(enc, torch.zeros(1, 5)) == 7 + 3 + 3
    assert dec.output_bias is dec.out.bias and dec.output_bias.shape == (5,)


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
    with pytest.raises(ConfigError, match="known presets: burda, burda2, conv, pyro"):
        VAE.from_preset("resnet", 784)
    with pytest.raises(ConfigError, match=r"init_output_bias needs a decoder with an "
                                          r"output_bias of shape \(6,\)"):
        VAE(6, latent_dim=2, decoder=nn.Linear(2, 6)).init_output_bias(torch.zeros(6))
