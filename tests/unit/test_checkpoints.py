"""Training checkpoints are sealed under a key of the run: unreadable on disk, any change detected."""

from __future__ import annotations

import io

import pytest
import torch

from lepton_lab.errors import IntegrityError
from lepton_lab.ml.checkpoints import Checkpoints, save_checkpoint


def _write(ckpts: Checkpoints, step: int, payload: bytes) -> None:
    save_checkpoint(ckpts.spec(), "xgboost", step, lambda f: f.write(payload), [{"round": step}])


def test_a_checkpoint_round_trips_and_is_not_plaintext_on_disk(tmp_path):
    ckpts = Checkpoints(tmp_path, every=1)
    ckpts.reset("run-1")
    payload = b"booster-bytes " * 500
    _write(ckpts, 3, payload)
    latest = ckpts.latest()
    assert latest["step"] == 3 and ckpts.read(latest) == payload
    on_disk = (tmp_path / latest["file"]).read_bytes()
    assert b"booster-bytes" not in on_disk and on_disk.startswith(b"LPTNENV1")
    assert "key" not in (tmp_path / "latest.json").read_text()


def test_a_torch_checkpoint_streams_through_the_envelope(tmp_path):
    ckpts = Checkpoints(tmp_path, every=1)
    ckpts.reset("run-1")
    state = {"w": torch.arange(10_000, dtype=torch.float32)}
    save_checkpoint(ckpts.spec(), "torch", 1, lambda f: torch.save(state, f), [])
    back = torch.load(io.BytesIO(ckpts.read(ckpts.latest())), weights_only=True)
    assert torch.equal(back["w"], state["w"])


def test_a_changed_byte_or_another_runs_key_does_not_open(tmp_path):
    ckpts = Checkpoints(tmp_path, every=1)
    ckpts.reset("run-1")
    _write(ckpts, 1, b"x" * 5000)
    latest = ckpts.latest()
    path = tmp_path / latest["file"]
    original = path.read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 1
    path.write_bytes(bytes(changed))
    with pytest.raises(IntegrityError) as err:
        ckpts.read(latest)
    assert "\n" not in str(err.value)
    path.write_bytes(original)
    other = Checkpoints(tmp_path, every=1)
    other.run = "run-1"  # same name, but not the run that wrote it
    with pytest.raises(IntegrityError, match="another run"):
        other.read(latest)
