"""pyro_vae.files: atomic writes survive crashes, torch files (checkpoints) round-trip as plain
data, every file that is not a torch file of plain data is refused with CheckpointError without
running any code it holds, and a damaged archive never loads as different numbers. (What a
checkpoint's entries mean, its format tag and their checks, are pyro_vae.runs's:
tests/test_runs.py.)"""

import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_vae import files as files_module
from pyro_vae.errors import CheckpointError
from pyro_vae.files import (
    atomic_write_bytes,
    atomic_write_json,
    check_writable,
    read_torch_file,
    save_torch_file,
)

ROOT = Path(__file__).resolve().parents[1]


def small_checkpoint(epoch=3) -> dict:
    g = torch.Generator().manual_seed(epoch)
    return {
        "config": {"estimator": "meanfield", "hidden_sizes": [8], "data_dir": None, "lr": 1e-3},
        "x_dim": 4,
        "epoch": epoch,
        "model_state": {"w": torch.randn(3, 4, generator=g), "b": torch.zeros(3)},
        "optimizer_state": {"decoder$$$w": {"state": {0: {"step": torch.tensor(5.0)}},
                                            "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999),
                                                              "params": [0]}]}},
        "rng_state": {"torch": torch.get_rng_state(), "python": [1, 2, 3]},
        "history": [{"epoch": 1, "train_elbo": -100.5, "test_elbo": float("nan")}],
    }


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- round trip --------------------------------------------------------------------------------
def test_checkpoint_round_trip_is_exact(tmp_path):
    ckpt = small_checkpoint()
    save_torch_file(tmp_path / "checkpoint.pt", ckpt)
    loaded = read_torch_file(tmp_path / "checkpoint.pt")
    assert loaded.keys() == ckpt.keys()  # nothing added: the format tag is pyro_vae.runs's
    assert loaded["config"] == ckpt["config"] and loaded["epoch"] == 3
    for key, value in ckpt["model_state"].items():
        assert torch.equal(loaded["model_state"][key], value)
    assert torch.equal(loaded["rng_state"]["torch"], ckpt["rng_state"]["torch"])
    group = loaded["optimizer_state"]["decoder$$$w"]["param_groups"][0]
    assert group["betas"] == (0.9, 0.999)
    assert loaded["history"][0]["train_elbo"] == -100.5
    assert np.isnan(loaded["history"][0]["test_elbo"])
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize(
    "bad, where",
    [(Path("/data"), "checkpoint['config']['data_dir'] is a pathlib.PosixPath"),
     (np.float64(1.5), "checkpoint['config']['data_dir'] is a numpy.float64"),
     (object(), "checkpoint['config']['data_dir'] is a builtins.object")],
    ids=["Path", "numpy scalar", "object"],
)
def test_save_torch_file_refuses_what_a_weights_only_load_could_not_read(tmp_path, bad, where):
    path = tmp_path / "checkpoint.pt"
    save_torch_file(path, small_checkpoint(epoch=1))
    before = path.read_bytes()
    ckpt = small_checkpoint(epoch=2)
    ckpt["config"]["data_dir"] = bad
    with pytest.raises(TypeError, match="^checkpoint entry " + re.escape(where)):
        save_torch_file(path, ckpt)
    assert path.read_bytes() == before and temporaries(tmp_path) == []


# --- atomic writes -----------------------------------------------------------------------------
@pytest.mark.parametrize("fail_in", ["write", "fsync", "replace"])
def test_failed_write_leaves_the_old_file_intact(tmp_path, monkeypatch, fail_in):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"epochs": [1]})
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # like a Ctrl-C, or the power going, at that moment

    if fail_in == "write":
        monkeypatch.setattr(files_module.json, "dumps", lambda *a, **k: "x" * 10)
        real_fdopen = os.fdopen

        class Torn:
            def __init__(self, fd, mode):
                self.f = real_fdopen(fd, mode)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                self.f.write(data[: len(data) // 2])  # half of it, then the crash
                raise KeyboardInterrupt

        monkeypatch.setattr(files_module.os, "fdopen", Torn)
    else:
        monkeypatch.setattr(files_module.os, fail_in, crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(path, {"epochs": [1, 2]})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert json.loads(path.read_text()) == {"epochs": [1]}
    assert temporaries(tmp_path) == []


def test_sigkill_between_write_and_rename_leaves_the_old_checkpoint(tmp_path):
    """A real process, killed with SIGKILL after writing the new checkpoint's bytes but before
    the rename: the old checkpoint still loads, unchanged."""
    path = tmp_path / "checkpoint.pt"
    save_torch_file(path, small_checkpoint(epoch=1))
    child = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pyro_vae import files
        def stall(src, dst):
            print("written", flush=True)
            time.sleep(60)
        files.os.replace = stall
        ckpt = {{"config": {{}}, "x_dim": 4, "epoch": 2,
                "model_state": {{"w": files.torch.ones(1000, 100)}}}}
        files.save_torch_file({str(path)!r}, ckpt)
    """)
    with subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE,
                          text=True) as proc:
        try:
            assert proc.stdout.readline().strip() == "written"
            assert len(temporaries(tmp_path)) == 1  # the new bytes are on disk, elsewhere
            os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
    loaded = read_torch_file(path)
    assert loaded["epoch"] == 1
    assert torch.equal(loaded["model_state"]["w"], small_checkpoint(epoch=1)["model_state"]["w"])


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(path, b"a" * 1000)
    atomic_write_bytes(path, b"b")
    assert path.read_bytes() == b"b" and temporaries(path.parent) == []


# --- safe loading ------------------------------------------------------------------------------
class Evil:
    """Unpickling this (with a plain pickle.load) would create a file: arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_case(path: Path, case: str) -> None:
    good = small_checkpoint()
    noise = np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes()
    if case == "random bytes":
        path.write_bytes(b"\x13" + noise)
    elif case == "random bytes after a pickle header":
        path.write_bytes(b"\x80\x02" + noise)
    elif case == "random bytes after a zip header":
        path.write_bytes(b"PK\x03\x04" + noise)
    elif case == "text file":
        path.write_text("epoch 3\nthis is not a checkpoint\n")
    elif case == "empty file":
        path.write_bytes(b"")
    elif case == "truncated":
        save_torch_file(path, good)
        path.write_bytes(path.read_bytes()[:600])
    elif case == "pickle of a class":
        path.write_bytes(pickle.dumps(Evil(path.parent / "pwned"), protocol=2))
    elif case == "torch.save with a class":
        torch.save({**good, "extra": Evil(path.parent / "pwned")}, path)
    else:  # pragma: no cover
        raise AssertionError(case)


REFUSALS = {
    "random bytes": r"not a pyro_vae checkpoint: expected a torch.save zip archive, found a "
                    r"file starting with b'\\x13",
    "random bytes after a pickle header": r"not a pyro_vae checkpoint: expected a torch.save "
                                          r"zip archive, found a file starting with b'\\x80",
    "random bytes after a zip header": r"damaged checkpoint: the zip archive cannot be read "
                                       r"\(BadZipFile: ",
    "text file": r"not a pyro_vae checkpoint: expected a torch.save zip archive, found a file "
                 r"starting with b'epoch 3\\n",
    "empty file": r"expected a torch.save zip archive, found an empty file$",
    "truncated": r"damaged checkpoint: the zip archive cannot be read \(BadZipFile: ",
    "pickle of a class": r"expected a torch.save zip archive, found a file starting with "
                         r"b'\\x80\\x02",
    "torch.save with a class": r"refused by the weights-only unpickler: the file holds Python "
                               r"objects other than tensors and plain data\)$",
}


@pytest.mark.parametrize("case", list(REFUSALS), ids=list(REFUSALS))
def test_read_torch_file_refuses_what_is_not_a_torch_file_of_plain_data(tmp_path, case):
    path = tmp_path / "checkpoint.pt"
    write_case(path, case)
    with pytest.raises(CheckpointError) as info:
        read_torch_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    assert re.search(REFUSALS[case], message), message
    assert not (tmp_path / "pwned").exists()  # nothing in the file ran


def test_read_torch_file_of_a_missing_file_or_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match=rf"^{tmp_path}: checkpoint file not found$"):
        read_torch_file(tmp_path)
    with pytest.raises(CheckpointError, match=r"nope.pt: checkpoint file not found$"):
        read_torch_file(tmp_path / "nope.pt")


def test_any_torch_file_of_plain_data_loads_as_it_was_saved(tmp_path):
    """Without the format tag too: whether plain data is a checkpoint is for
    pyro_vae.runs.load_checkpoint to say (tests/test_runs.py)."""
    path = tmp_path / "data.pt"
    torch.save({"model_state": {"w": torch.arange(3.0)}, "epoch": 3}, path)
    loaded = read_torch_file(path)
    assert loaded.keys() == {"model_state", "epoch"} and loaded["epoch"] == 3
    assert torch.equal(loaded["model_state"]["w"], torch.arange(3.0))
    torch.save(torch.ones(3), path)
    assert torch.equal(read_torch_file(path), torch.ones(3))


GOOD = small_checkpoint()


def _checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save(GOOD, buffer)
    return buffer.getvalue()


GOOD_BYTES = _checkpoint_bytes()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(at=st.lists(st.integers(0, len(GOOD_BYTES) - 1), min_size=1, max_size=3),
       value=st.integers(1, 255), cut=st.none() | st.integers(0, len(GOOD_BYTES)))
def test_damaged_bytes_never_load_as_other_numbers(tmp_path, at, value, cut):
    """Bits flipped anywhere, or the file cut short: CheckpointError naming the file, or (for
    bytes that hold no content, e.g. the zip's alignment padding) exactly the saved dict."""
    raw = bytearray(GOOD_BYTES)
    for i in at:
        raw[i] ^= value
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(bytes(raw[:cut]))
    try:
        ckpt = read_torch_file(path)
    except CheckpointError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
    else:
        good = GOOD
        assert ckpt["config"] == good["config"] and ckpt["history"][0]["train_elbo"] == -100.5
        for key, tensor in good["model_state"].items():
            assert torch.equal(ckpt["model_state"][key], tensor)
        assert torch.equal(ckpt["rng_state"]["torch"], good["rng_state"]["torch"])


def test_a_bit_flipped_inside_a_weight_is_caught_by_the_crc(tmp_path):
    """The damage that torch.load alone would load silently: one bit of one float."""
    path = tmp_path / "checkpoint.pt"
    save_torch_file(path, {"model_state": {"w": torch.arange(256.0)}})
    raw = bytearray(path.read_bytes())
    offset = raw.find(torch.arange(256.0).numpy().tobytes())
    assert offset > 0
    raw[offset + 4 * 100 + 1] ^= 0x10  # weight 100 becomes another number
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"archive member '.*data/0' fails its CRC-32"):
        read_torch_file(path)


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    """Not mkstemp's private 0600: the mode that open() would give under the umask."""
    import os

    from pyro_vae.files import _UMASK, atomic_write_json

    atomic_write_json(tmp_path / "m.json", {"a": 1})
    with open(tmp_path / "plain", "w"):
        pass
    mode = (tmp_path / "m.json").stat().st_mode & 0o777
    assert mode == 0o666 & ~_UMASK == (tmp_path / "plain").stat().st_mode & 0o777
    assert os.access(tmp_path / "m.json", os.R_OK)


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"epochs": [1]})
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files_module.os, "fsync", full)
    with pytest.raises(OSError, match=rf"cannot write {path}: No space left on device; the "
                                      r"previous version of the file, if any, is unchanged"):
        atomic_write_json(path, {"epochs": [1, 2]})
    monkeypatch.setattr(files_module.os, "fsync", real_fsync)
    assert json.loads(path.read_text()) == {"epochs": [1]} and temporaries(tmp_path) == []


def test_check_writable_says_before_the_work_what_would_fail_at_its_end(tmp_path):
    target = tmp_path / "new" / "folder" / "evaluation.json"
    assert check_writable(target) == target and target.parent.is_dir()
    assert list(target.parent.iterdir()) == []  # the trial file is gone
    with pytest.raises(OSError, match=rf"^\[Errno 21\] cannot write {re.escape(str(tmp_path))}: "
                       "it is a folder$"):
        check_writable(tmp_path)
    (tmp_path / "a file").write_text("")
    with pytest.raises(OSError, match=r"cannot write .*a file/x\.json: a file is in the way of "
                       r"its folder$"):
        check_writable(tmp_path / "a file" / "x.json")
