import pyro
import pytest
import torch

# One intra-op thread: the suite's networks are small, and several tests start subprocesses
# (kill-and-resume, torchrun); on 2 cores, OpenMP's spinning threads then cost several times
# the CPU time they save.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def fresh_pyro():
    """Every test starts with an empty param store, validation on and a fixed seed."""
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=""):
    """One tolerance check for tensors and floats, used across the suite."""
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64).expand(actual.shape)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=msg or None)


def binary_batch(batch_size=16, x_dim=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.rand(batch_size, x_dim, generator=g), generator=g)
