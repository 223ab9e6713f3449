"""The Python API's entry points under arbitrary tensors (Hypothesis: shapes, dtypes, values):
each input gives a correct result or one line of a :class:`PyroVAEError` that is also a
``ValueError`` or ``TypeError``, never a traceback from deep inside torch or Pyro."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_vae import VAE, PyroVAEError, make_objective
from pyro_vae.data import binarize, from_arrays, preprocess
from pyro_vae.evaluation import AISSettings, ais, estimate_log_px, mean_elbo

X_DIM = 6
DTYPES = [torch.float32, torch.float64, torch.float16, torch.int64, torch.uint8, torch.bool]
VALUES = st.sampled_from([0.0, 1.0, 0.5, -1.0, 2.0, 255.0, math.nan, math.inf])


@st.composite
def tensors(draw):
    """A tensor of 0–3 dims, sizes 0–4 (one of them often X_DIM), any of DTYPES, filled with
    values that are binary, grey, out of range or not finite."""
    dims = draw(st.integers(0, 3))
    shape = [draw(st.sampled_from([0, 1, 3, X_DIM, X_DIM + 1])) for _ in range(dims)]
    fill = draw(st.lists(VALUES, min_size=1, max_size=4))
    values = np.resize(np.array(fill), int(np.prod(shape, dtype=int)))
    dtype = draw(st.sampled_from(DTYPES))
    if not dtype.is_floating_point:
        values = np.nan_to_num(np.abs(values), nan=0, posinf=1).clip(0, 255)
    return torch.as_tensor(values.reshape(shape)).to(dtype)


def one_line_or_result(call):
    """``call()``'s result, or ``None`` after a one-line PyroVAEError (ValueError/TypeError)."""
    try:
        return call()
    except PyroVAEError as e:
        assert isinstance(e, (ValueError, TypeError)), type(e)
        message = str(e)
        assert message and "\n" not in message and len(message) < 400, message
        assert "tensor(" not in message  # no tensor dumps
        return None


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return VAE(X_DIM, latent_dim=2, hidden_sizes=(4,))


def binary_rows(x: torch.Tensor) -> bool:
    return (x.dim() == 2 and x.shape[0] > 0 and x.shape[1] == X_DIM
            and x.dtype == torch.float32 and bool(((x == 0) | (x == 1)).all()))


FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(x=tensors(), name=st.sampled_from(["meanfield", "trace", "iwae", "analytic", "dreg"]))
def test_a_loss_on_any_tensor_is_a_number_or_one_line(vae, x, name):
    loss = one_line_or_result(lambda: make_objective(name, vae).loss(x))
    if binary_rows(x):
        assert loss is not None and math.isfinite(loss)
    else:
        assert loss is None


@FUZZ
@given(x=tensors(), which=st.sampled_from(["model", "guide"]))
def test_the_model_and_guide_take_binary_rows_and_refuse_the_rest(vae, x, which):
    z = one_line_or_result(lambda: getattr(vae, which)(x))
    assert (z is not None) == binary_rows(x)


@FUZZ
@given(x=tensors(), evaluator=st.sampled_from(["is", "ais", "elbo"]))
def test_the_evaluators_on_any_tensor(vae, x, evaluator):
    call = {"is": lambda: estimate_log_px(vae, x, num_samples=3).log_px,
            "ais": lambda: ais(vae, x, AISSettings(num_steps=2, num_chains=2)).log_px,
            "elbo": lambda: torch.tensor(mean_elbo(vae, x))}[evaluator]
    result = one_line_or_result(call)
    if binary_rows(x):
        assert result is not None and bool(torch.isfinite(result).all())
    else:
        assert result is None


@FUZZ
@given(x=tensors())
def test_the_data_helpers_on_any_tensor(x):
    grey = one_line_or_result(lambda: preprocess(x))
    if grey is not None:
        assert grey.dtype == torch.float32
    binary = one_line_or_result(lambda: binarize(x))
    if binary is not None:
        assert bool(((binary == 0) | (binary == 1)).all())
    data = one_line_or_result(lambda: from_arrays(x, x))
    if data is not None:
        assert data.train_images.shape[0] == x.shape[0] > 0
