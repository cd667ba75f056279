"""Checkpoint and resume of EF21-SGD, MARINA and EF-SGD with PowerSGD through the runner
(docs/theory.md §10–§12): a run that crashes after its checkpoint, restarted from that file,
ends bit-identical to the uninterrupted run. What must survive is each method's own state: the
estimates g_i and g (EF21), the last gradients, the estimate and the shared coin's stream
(MARINA), the error memories and PowerSGD's warm start Q (kept by the channel's scheme state)."""

from __future__ import annotations

import pytest
import torch

import suite.artifacts
from suite.runner import execute
from tests.conftest import make_cfg

SMALL = ("task.dataset=synthetic", "task.n_samples=240", "task.dim=12", "task.l2=0.05",
         "workers=4", "hardware.threads=1", "steps=30", "eval_every=5")
METHODS = {
    "ef21_sgd": ("algorithm=ef21", "compressor=topk", "compressor.k=2", "compressor.ratio=null",
                 "batch_size=4", "lr=0.2"),
    # p = 0.3: the coin lands ~4.5 times in the 15 resumed rounds, so both branches run
    "marina": ("algorithm=marina", "compressor=randk", "compressor.k=3",
               "compressor.ratio=null", "algorithm.p=0.3", "lr=0.2"),
    "ef_sgd_powersgd": ("algorithm=ef_sgd", "compressor=powersgd", "compressor.rank=1",
                        "batch_size=4", "lr=0.2"),
}


@pytest.fixture(autouse=True)
def _fast(monkeypatch):
    """One thread and no plots: neither is what these tests are about."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(suite.artifacts, "plot_convergence", lambda *a, **k: None)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", list(METHODS))
def test_a_run_restarted_from_its_checkpoint_ends_bit_identical(name, tmp_path, monkeypatch):
    overrides = METHODS[name]
    reference = execute(make_cfg(*SMALL, *overrides), launch_dir=tmp_path / "ref",
                        output_dir=tmp_path / "ref-out")
    assert reference.status == "FINISHED"

    crash = tmp_path / "crash"
    monkeypatch.setenv("COMMSGD_TEST_FAIL_AT_STEP", "20")
    with pytest.raises(RuntimeError, match="simulated crash"):
        execute(make_cfg(*SMALL, *overrides, "checkpoint_every=15"), launch_dir=crash,
                output_dir=crash / "out")
    monkeypatch.delenv("COMMSGD_TEST_FAIL_AT_STEP")
    (ckpt,) = (crash / "checkpoints").glob("*.pt")
    assert torch.load(ckpt, weights_only=False)["step"] == 15

    resumed = execute(make_cfg(*SMALL, *overrides, f"checkpoint_path={ckpt}"),
                      launch_dir=crash, output_dir=crash / "resumed")
    assert resumed.status == "FINISHED"
    assert torch.equal(resumed.params, reference.params)
    # every value logged after the restart, bit counts included, is the uninterrupted run's
    after = sorted((k, s, v) for k, v, s in resumed.history if s > 15 and not k.startswith("time/"))
    expected = sorted((k, s, v) for k, v, s in reference.history
                      if s > 15 and not k.startswith("time/"))
    assert after == expected and after
    # and the run moved after the restart: resuming a frozen state would prove nothing
    saved = torch.load(ckpt, weights_only=True)["state"]  # field names and values (format 4)
    assert not torch.equal(saved["values"][saved["fields"].index("x")], reference.params)
