"""The CIFAR-10 ResNet task: models, per-worker gradients and BatchNorm, data, augmentation,
the runner end to end. FakeData and ResNet-20 at tiny sizes, one torch thread (conftest.py):
about 25 s of CPU time; nothing touches the network."""

from __future__ import annotations

import math
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_cfg
from torch.nn.utils import vector_to_parameters

from suite.config import ConfigError
from suite.hardware import select_device
from suite.rng import WorkerStreams
from suite.runner import Run, execute
from tasks import cifar_data
from tasks.cifar10 import Cifar10ResNet
from tasks.libsvm import DatasetChecksumError, DatasetUnavailableError
from tasks.resnet import resnet18, resnet20

# the smallest data that still gives every worker a shard of a few images
FAKE = dict(dataset="fake", fake_size=48, fake_test_size=16, eval_batches=1,
            eval_batch_size=16)
RUN = ("task=cifar10_resnet", "task.dataset=fake", "task.fake_size=48",
       "task.fake_test_size=16", "task.eval_batches=1", "task.eval_batch_size=16",
       "workers=4", "batch_size=2", "steps=3", "eval_every=3", "lr=0.05")


def make_task(workers=2, **kw) -> Cifar10ResNet:
    return Cifar10ResNet(workers=workers, **(FAKE | kw))


def plain_resnet20(x: torch.Tensor) -> torch.nn.Module:
    """The same network as an ordinary nn.Module with nn.BatchNorm2d, parameters set to x."""
    net = resnet20().to(x.dtype)
    vector_to_parameters(x, net.parameters())
    return net


# -- models ------------------------------------------------------------------------------------
def test_parameter_counts():
    # He et al. 2016, Table 6: ResNet-20 has 0.27M parameters (option A: no projection weights)
    assert sum(p.numel() for p in resnet20().parameters()) == 269_722
    assert sum(p.numel() for p in resnet18().parameters()) == 11_173_962
    assert make_task(model="resnet20").dim == 269_722


def test_parameter_shapes_tile_the_flat_vector_and_reach_the_channels_schemes():
    """Schemes that compress per layer (suite.comm.Env.shapes) see the network's tensors."""
    import math

    from suite.runner import Run
    from tests.conftest import make_cfg

    task = make_task(model="resnet20")
    shapes = task.param_shapes
    assert sum(math.prod(s) for s in shapes) == task.dim
    assert shapes[0] == (16, 3, 3, 3)  # the first convolution: 16 filters of 3×3×3
    run = Run(make_cfg(*RUN))
    assert run.channel._env(run.task.dim, torch.float32, run.device).shapes == shapes
    assert run.channel._env(10, torch.float32, run.device).shapes is None


# -- gradients and BatchNorm -------------------------------------------------------------------
def _per_worker_points(task, scale=1e-2):
    gen = torch.Generator().manual_seed(1)
    x = task.x0()
    noise = torch.randn(len(task.worker_ids), task.dim, generator=gen, dtype=x.dtype)
    return x + scale * noise


@pytest.mark.parametrize("shared", [True, False], ids=["shared_x", "per_worker_x"])
def test_vmap_and_loop_gradients_agree_in_float64(shared):
    """Same gradients, losses and BN statistics both ways, to float64 rounding (1e-10)."""
    tasks = {mode: make_task(workers=3, grad_mode=mode, dtype="float64")
             for mode in ("vmap", "loop")}
    streams = WorkerStreams(0, "sampling", range(3))
    batch = tasks["vmap"].sample_batch(streams, 4)
    x = tasks["vmap"].x0() if shared else _per_worker_points(tasks["vmap"])
    g = {mode: t.grads(x, batch) for mode, t in tasks.items()}
    assert g["vmap"].shape == (3, tasks["vmap"].dim)
    torch.testing.assert_close(g["vmap"], g["loop"], rtol=1e-9, atol=1e-10)
    for name in tasks["vmap"].running:
        for a, b in zip(tasks["vmap"].running[name], tasks["loop"].running[name], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    m = {mode: t.evaluate(x if shared else x.mean(0)) for mode, t in tasks.items()}
    assert m["vmap"]["train/loss"] == pytest.approx(m["loop"]["train/loss"], rel=1e-10)
    # the workers' batches differ, so their gradients must too (no accidental sharing)
    assert not torch.allclose(g["vmap"][0], g["vmap"][1])


def test_vmap_and_loop_agree_in_float32():
    """float32: ReLU kinks can flip under rounding, so agreement is to 1e-2 in norm, and
    almost every coordinate to 1e-4 (measured: typically 1e-6, worst seen 3e-3)."""
    tasks = {mode: make_task(workers=2, grad_mode=mode) for mode in ("vmap", "loop")}
    batch = tasks["vmap"].sample_batch(WorkerStreams(0, "sampling", range(2)), 4)
    x = _per_worker_points(tasks["vmap"])
    gv, gl = (t.grads(x, batch) for t in tasks.values())
    assert float((gv - gl).norm() / gl.norm()) < 1e-2
    assert float(((gv - gl).abs() <= 1e-4 + 1e-3 * gl.abs()).double().mean()) > 0.99


def test_each_worker_matches_a_plain_pytorch_training_step():
    """Worker k's gradient, loss, and BN running statistics are exactly those of an
    nn.Module with nn.BatchNorm2d doing loss.backward() on worker k's batch alone: BN uses
    each worker's own batch statistics, and the running update is PyTorch's."""
    task = make_task(workers=3, dtype="float64", weight_decay=0.0)
    batch = task.sample_batch(WorkerStreams(0, "sampling", range(3)), 4)
    x = _per_worker_points(task)
    g = task.grads(x, batch)
    losses = []
    for k in range(3):
        net = plain_resnet20(x[k])
        loss = F.cross_entropy(net(batch.images[k]), batch.labels[k])
        loss.backward()
        losses.append(loss.item())
        torch.testing.assert_close(g[k], torch.cat([p.grad.reshape(-1) for p in
                                                    net.parameters()]), rtol=1e-9, atol=1e-11)
        for name, module in net.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                mean, var = task.running[name]
                torch.testing.assert_close(mean[k], module.running_mean, rtol=1e-9, atol=1e-12)
                torch.testing.assert_close(var[k], module.running_var, rtol=1e-9, atol=1e-12)
    # train/loss is the mean of the minibatch losses since the last evaluation
    assert task.evaluate(x.mean(0))["train/loss"] == pytest.approx(np.mean(losses), rel=1e-10)


def test_evaluation_uses_the_pooled_running_statistics():
    """test/loss and test/accuracy are an eval-mode nn.Module's, with BN buffers set to the
    pooled statistics: mean of the workers' means, and mean of variances + variance of means."""
    task = make_task(workers=2, dtype="float64")
    for mean, var in task.running.values():
        mean[0], mean[1] = 1.0, 3.0
        var[0], var[1] = 2.0, 4.0
    pooled = task.pooled_running_stats()
    assert torch.all(pooled["bn.running_mean"] == 2.0)
    assert torch.all(pooled["bn.running_var"] == 3.0 + 1.0)  # (2+4)/2 + ((1−2)²+(3−2)²)/2
    x = task.x0()
    net = plain_resnet20(x).eval()
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(pooled[f"{name}.running_mean"])
            module.running_var.copy_(pooled[f"{name}.running_var"])
    with torch.no_grad():
        logits = net(cifar_data.normalise(task.test_x[:16], torch.float64))
    metrics = task.evaluate(x)
    assert metrics["test/loss"] == pytest.approx(float(F.cross_entropy(logits, task.test_y[:16])),
                                                 rel=1e-10)
    expected_acc = float((logits.argmax(1) == task.test_y[:16]).double().mean())
    assert metrics["test/accuracy"] == pytest.approx(expected_acc)
    # before any step train/loss is measured on training images; it is a real loss
    assert 0.5 < metrics["train/loss"] < 20 and math.isfinite(metrics["train/loss"])


def test_weight_decay_adds_lambda_x():
    plain, decayed = make_task(dtype="float64", weight_decay=0.0), \
        make_task(dtype="float64", weight_decay=0.01)
    batch = plain.sample_batch(WorkerStreams(0, "sampling", range(2)), 4)
    x = _per_worker_points(plain)
    torch.testing.assert_close(decayed.grads(x, batch) - plain.grads(x, batch), 0.01 * x,
                               rtol=1e-9, atol=1e-12)


def test_loss_falls_when_overfitting_a_fixed_batch():
    """SGD on 16 fixed images (no augmentation) memorises them: the loss halves."""
    task = make_task(workers=1, augment=False, weight_decay=0.0)
    batch = task.sample_batch(WorkerStreams(0, "sampling", [0]), 16)
    x = task.x0()
    losses = []
    for _ in range(20):
        x = x - 0.1 * task.grads(x, batch)[0]
        losses.append(task.evaluate(x)["train/loss"])
    assert losses[-1] < 0.5 * losses[0], losses


def test_bf16_and_channels_last_give_close_gradients():
    ref = make_task()
    batch = ref.sample_batch(WorkerStreams(0, "sampling", range(2)), 4)
    x = ref.x0()
    g = ref.grads(x, batch)
    nhwc = make_task(channels_last=True)
    assert nhwc.sample_batch(WorkerStreams(0, "sampling", range(2)), 4).images[0] \
        .is_contiguous(memory_format=torch.channels_last)
    assert float((nhwc.grads(x, batch) - g).norm() / g.norm()) < 1e-2
    g16 = make_task(bf16=True).grads(x, batch)
    assert g16.dtype == torch.float32 and torch.isfinite(g16).all()
    assert float(F.cosine_similarity(g16, g).min()) > 0.9


# -- data --------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["iid", "by_label", "dirichlet"])
def test_splits_are_disjoint_and_complete_and_batches_come_from_own_shard(split):
    task = make_task(workers=4, split=split, augment=False, dtype="float64")
    shards = task.shards
    assert sorted(np.concatenate(shards).tolist()) == list(range(task.n))
    assert list(task.shard_sizes) == [len(s) for s in shards] and min(task.shard_sizes) >= 1
    batch = task.sample_batch(WorkerStreams(0, "sampling", range(4)), 8)
    every = cifar_data.normalise(task.train_x, torch.float64).flatten(1)
    for k, shard in enumerate(shards):
        # each image of worker k's batch is an image of its shard, with the label it has there
        match = (batch.images[k].flatten(1)[:, None, :] == every[None]).all(-1)  # [b, n]
        source = match.int().argmax(1)
        assert match.any(1).all() and np.isin(source.numpy(), shard).all()
        assert torch.equal(batch.labels[k], task.train_y[source])


def test_augmentation_is_a_padded_crop_and_flip():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).view(2, 3, 32, 32)
    # image 0: offsets (dy, dx) = (0, 8), no flip; image 1: (5, 2), flipped
    u = torch.tensor([[0.0, 0.99, 0.9], [5.5 / 9, 2.5 / 9, 0.1]], dtype=torch.float64)
    out = cifar_data.augment(images, u)
    padded = F.pad(images, (4, 4, 4, 4))
    assert torch.equal(out[0], padded[0, :, 0:32, 8:40])
    assert torch.equal(out[1], padded[1, :, 5:37, 2:34].flip(-1))


def test_batches_are_reproducible_and_independent_of_the_worker_layout():
    """A worker draws the same images and augmentations whether its process holds all
    workers or only it (the distributed layout)."""
    everyone = make_task(workers=4)
    alone = make_task(workers=4, worker_ids=[2])
    b_all = everyone.sample_batch(WorkerStreams(7, "sampling", range(4)), 6)
    b_one = alone.sample_batch(WorkerStreams(7, "sampling", [2]), 6)
    assert torch.equal(b_all.images[2], b_one.images[0])
    assert torch.equal(b_all.labels[2], b_one.labels[0])
    again = everyone.sample_batch(WorkerStreams(7, "sampling", range(4)), 6)
    assert torch.equal(b_all.images, again.images)


def test_every_tensor_lives_on_the_task_device():
    """The device is passed through, never assumed: build on a device named by a variable
    and check where every tensor ends up (on a GPU machine the same code runs on cuda)."""
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    task = make_task(workers=2, device=device)
    streams = WorkerStreams(0, "sampling", range(2), device)
    batch = task.sample_batch(streams, 4)
    x = task.x0()
    tensors = [x, *batch, task.grads(x, batch), task.shard_table, task.train_x, task.test_x,
               *[t for pair in task.running.values() for t in pair],
               *task.pooled_running_stats().values()]
    assert {t.device for t in tensors} == {device}


def test_offline_download_names_the_path(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("COMMSGD_DATA", str(tmp_path))
    with pytest.raises(DatasetUnavailableError) as info:
        Cifar10ResNet(workers=2, dataset="cifar10")
    path = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    assert str(path) in str(info.value) and "network is unreachable" in str(info.value)
    assert cifar_data.ARCHIVE_URL in str(info.value)


def test_a_corrupt_archive_is_refused_with_its_checksum(monkeypatch, tmp_path):
    monkeypatch.setenv("COMMSGD_DATA", str(tmp_path))
    archive = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"not the archive")
    with pytest.raises(DatasetChecksumError, match=cifar_data.ARCHIVE_MD5):
        Cifar10ResNet(workers=2, dataset="cifar10")


# -- the runner --------------------------------------------------------------------------------
ALGORITHMS = {
    "sgd": ["algorithm=sgd"],
    "ef_sgd_topk": ["algorithm=ef_sgd", "compressor=topk"],
    "delayed_sgd": ["algorithm=delayed_sgd", "algorithm.delay=1"],
    "local_sgd": ["algorithm=local_sgd", "algorithm.local_steps=2"],
    "diana_quant_p": ["algorithm=diana", "compressor=quant_p"],
    "qsgd": ["algorithm=qsgd"],
    "terngrad": ["algorithm=terngrad"],
}


@pytest.mark.parametrize("overrides", ALGORITHMS.values(), ids=ALGORITHMS.keys())
def test_every_algorithm_trains_resnet20_on_four_workers(overrides):
    result = execute(make_cfg(*RUN, *overrides))
    assert result.status == "FINISHED"
    final = result.final
    for key in ("train/loss", "test/loss", "test/accuracy"):
        assert math.isfinite(final[key]), (key, final)
    assert final["comm/bits_up"] > 0 and final["comm/rounds"] >= 1


def test_dqgd_and_full_batches_are_refused_clearly():
    # dqgd is defined with full local gradients: a pass over every image per step
    with pytest.raises(ConfigError, match="batch_size=full is not supported"):
        execute(make_cfg(*RUN, "algorithm=dqgd", "batch_size=full"))


def test_lr_theory_is_refused():
    with pytest.raises(ConfigError, match="lr=theory needs the task constants L and mu"):
        Run(make_cfg(*RUN, "lr=theory"))


def test_bad_task_keys_name_the_key():
    with pytest.raises(ConfigError, match="task.model='resnet50'"):
        Run(make_cfg(*RUN, "task.model=resnet50"))
    with pytest.raises(ConfigError, match="task.grad_mode='jit'"):
        Run(make_cfg(*RUN, "task.grad_mode=jit"))


def test_hardware_keys_flow_into_the_task():
    cfg = make_cfg(*RUN, "hardware=gpu", "hardware.bf16=true", "hardware.channels_last=true")
    assert cfg.task.bf16 is True and cfg.task.channels_last is True
    assert make_cfg(*RUN).task.bf16 is False  # hardware=cpu has no such key: false
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="hardware=gpu asks for device cuda:0"):
            Run(cfg)
    with pytest.raises(ConfigError, match="hardware.bf16='yes'"):
        select_device({"name": "cpu", "device": "cpu", "bf16": "yes"})


def test_checkpointed_task_state_restores_the_batchnorm_statistics():
    task = make_task(workers=2)
    batch = task.sample_batch(WorkerStreams(0, "sampling", range(2)), 4)
    task.grads(task.x0(), batch)
    fresh = make_task(workers=2)
    fresh.load_state_dict(task.state_dict())
    for name, (mean, var) in task.running.items():
        assert torch.equal(fresh.running[name][0], mean)
        assert torch.equal(fresh.running[name][1], var)
    assert not torch.all(mean == 0)  # the statistics did move away from their start
    assert fresh.evaluate(task.x0()) == task.evaluate(task.x0())
    with pytest.raises(ValueError, match="cannot be loaded"):
        make_task(workers=2, worker_ids=[1]).load_state_dict(task.state_dict())


def test_a_run_resumed_from_its_checkpoint_ends_where_the_uninterrupted_run_does(tmp_path):
    """The checkpoint carries the per-worker BN statistics (task.state_dict): a restart from
    step 2 of 4 reproduces the parameters and the evaluation exactly."""
    args = (*RUN, "steps=4", "eval_every=2", "algorithm=local_sgd", "algorithm.local_steps=2")
    whole = execute(make_cfg(*args, "checkpoint_every=2"), launch_dir=tmp_path)
    (ckpt,) = (tmp_path / "checkpoints").glob("*.pt")
    resumed = execute(make_cfg(*args, f"checkpoint_path={ckpt}"), launch_dir=tmp_path)
    assert torch.equal(resumed.params, whole.params)
    for key in ("train/loss", "test/loss", "test/accuracy"):
        assert resumed.final[key] == whole.final[key], key
