"""The argument checks of :mod:`pyro_vae.checks` that no other module's tests hold: the
device."""

import pytest
import torch

from pyro_vae import checks
from pyro_vae.errors import ConfigError


def test_the_cpu_is_always_there():
    assert checks.device("cpu") == torch.device("cpu")
    assert checks.device(torch.device("cpu")) == torch.device("cpu")


def test_cuda_without_a_gpu_is_refused():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=rf"^device '{device}' requested but no CUDA GPU "
                                              r"is available; use --device cpu$"):
            checks.device(device)


def test_a_gpu_this_machine_lacks_is_refused():
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    count = torch.cuda.device_count()
    assert checks.device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match=rf"this machine has {count} CUDA GPU\(s\)"):
        checks.device(f"cuda:{count}")


@pytest.mark.parametrize("device, message", [
    ("tpu", "unknown device 'tpu'; use 'cpu' or 'cuda'"),
    ("meta", "unsupported device 'meta'; use 'cpu' or 'cuda'"),
    ("mps", "unsupported device 'mps'; use 'cpu' or 'cuda'"),
])
def test_a_device_that_is_no_cpu_or_gpu_is_refused(device, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        checks.device(device)
