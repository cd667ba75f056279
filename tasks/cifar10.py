"""CIFAR-10 image classification with a residual network, split over K workers.

Objective. Worker k holds shard S_k of the training images (`split`: iid, by_label, dirichlet,
as for logistic regression) and the local objective

    f_k(x) = E_{j ∈ S_k, a ~ augmentation} ℓ(net(x; a(image_j)), label_j) + (λ/2)‖x‖²,

with ℓ the cross-entropy, x the network's flat parameter vector (d floats: every weight and
BatchNorm scale and shift, in `named_parameters` order) and λ = `weight_decay` applied to all
of x, as torch.optim.SGD's weight_decay does; the global objective is f = (1/K) Σ_k f_k. A
minibatch gradient is the mean over b images drawn uniformly with replacement from the
worker's shard (as in the logistic task; not shuffled epochs), each augmented (random crop with
4-pixel padding, horizontal flip) with the worker's own random stream, plus λx.

Models (`model`): `resnet20` (He et al. 2016, CIFAR ResNet-20, option A shortcuts, 0.27M
parameters) and `resnet18` (CIFAR form, 11.2M); see tasks/resnet.py.

Per-worker gradients. The parameters are one flat vector; a [w, d] tensor holds one model per
worker (Local SGD, random delays) and a [d] tensor one shared model. The loss is written as a
function of the flat vector (split into views, then torch.func.functional_call), and
torch.func.grad of it is vmapped over the worker axis (in_dims 0 for the parameters, the
images and the labels; a shared vector is expanded to [w, d] as a view). `grad_mode: loop`
computes the same gradients one worker at a time (the simple path; a test checks they agree).
With one worker both take the single-worker path.

BatchNorm (He et al. use BN after every convolution). In training, each worker normalises
with the statistics of its own minibatch: under vmap each worker's batch is a separate slice,
and BatchNorm's batching rule computes statistics per slice, exactly as K separate machines
would. Running statistics are kept by the task, not by the modules (whose in-place buffer
updates cannot run inside vmap): one running mean and variance per worker and BN layer, [w, C]
tensors updated after every gradient call with PyTorch's rule r ← (1 − 0.1)·r + 0.1·s from
the batch statistics s (unbiased variance) that the forward pass returns. They are state of
the workers, not of the parameter vector: algorithms never see, send or average them, which is
also what data-parallel training does with BN buffers. Evaluation uses the held workers'
pooled statistics: the mean of their means, and by the law of total variance the mean of
their variances plus the variance of their means, i.e. the statistics of the union of the
workers' batches (for non-i.i.d. splits the plain mean of the variances would be too small).
Under torch.distributed each rank pools only the workers it holds.

Metrics. `train/loss` and `train/accuracy`: the mean cross-entropy (without the λ term) and
accuracy of the minibatches seen since the last evaluation (augmented, batch-statistics BN);
before the first step, the same quantities on the first training images (no augmentation,
batch statistics). `test/loss` and `test/accuracy`: on the test set in eval mode, with the
pooled running statistics, capped at `eval_batches` batches of `eval_batch_size` images
(null: the whole test set). Evaluation runs off the timed path.

Precision. float32 by default (`dtype: float64` for exact comparisons in tests). `bf16: true`
runs each network forward and backward under torch.autocast(bfloat16); gradients, parameters
and running statistics stay float32. `channels_last: true` hands the network its images in
NHWC memory layout (cuDNN's fast path on GPUs). Both default to the hardware option's keys
(conf/task/cifar10_resnet.yaml interpolates hardware.bf16 and hardware.channels_last).

Constants. Only `dim` and `n` are known; the smoothness and convexity constants that the
theorems use do not exist for a network, so `constants` reads any other key as NaN and the
runner refuses `lr=theory`. Full local gradients (`batch_size=full`) are refused.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from suite.config import ConfigError
from tasks import cifar_data
from tasks.resnet import MODELS, BatchStatsNorm2d
from tasks.splits import split_indices

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
GRAD_MODES = ("vmap", "loop")
BN_MOMENTUM = 0.1  # PyTorch's default: r ← (1 − m) r + m · batch statistic


class KnownConstants(dict):
    """The constants this task knows; any other key (L, mu, ...) reads as NaN, i.e. unknown.

    Iterating yields only the known ones, so only those are logged as task/<key>."""

    def __missing__(self, key):
        return math.nan


class CifarBatch(NamedTuple):
    images: torch.Tensor  # [w, b, 3, 32, 32] normalised, augmented, in the task's dtype
    labels: torch.Tensor  # [w, b] int64


class Cifar10ResNet:
    name = "cifar10_resnet"

    def __init__(self, *, workers: int, worker_ids: list[int] | None = None, device="cpu",
                 model: str = "resnet20", dataset: str = "cifar10", split: str = "iid",
                 dirichlet_alpha: float = 0.5, data_seed: int = 0, init_seed: int = 0,
                 weight_decay: float = 5e-4, augment: bool = True, grad_mode: str = "vmap",
                 dtype: str = "float32", channels_last: bool = False, bf16: bool = False,
                 eval_batches: int | None = None, eval_batch_size: int = 500,
                 fake_size: int = 512, fake_test_size: int = 128):
        _check_options(model=model, dataset=dataset, grad_mode=grad_mode, dtype=dtype,
                       weight_decay=weight_decay, eval_batches=eval_batches,
                       eval_batch_size=eval_batch_size, bf16=bf16,
                       channels_last=channels_last, augment=augment)
        self.model_name, self.dataset = model, dataset
        self.num_workers = workers
        self.worker_ids = list(range(workers)) if worker_ids is None else list(worker_ids)
        self.device, self.dtype = torch.device(device), _DTYPES[dtype]
        self.weight_decay, self.augment, self.grad_mode = float(weight_decay), augment, grad_mode
        self.bf16, self.channels_last = bf16, channels_last
        self.eval_batches, self.eval_batch_size = eval_batches, eval_batch_size

        self._load_data(dataset, split, dirichlet_alpha, data_seed, fake_size, fake_test_size)
        self._build_network(model, init_seed)
        self.constants = KnownConstants(dim=float(self.dim), n=float(self.n))

        w = len(self.worker_ids)
        self.running = {name: (torch.zeros(w, c, dtype=self.dtype, device=self.device),
                               torch.ones(w, c, dtype=self.dtype, device=self.device))
                        for name, c in self._bn_channels.items()}
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._correct = torch.zeros((), dtype=torch.float64, device=self.device)
        self._seen = 0  # worker-steps since the last evaluation
        self._images = 0  # images since the last evaluation
        self._last_batch_size = 0

        self._grad_fn = grad(self._loss, has_aux=True)
        # vmapped over the worker axis: parameters, images and labels
        self._vmapped = vmap(self._grad_fn, in_dims=(0, 0, 0))

    # -- construction ----------------------------------------------------------------------
    def _load_data(self, dataset, split, alpha, data_seed, fake_size, fake_test_size):
        images = cifar_data.load_images(dataset, data_seed=data_seed, fake_size=fake_size,
                                        fake_test_size=fake_test_size)
        self.n = len(images.train_y)
        shards = split_indices(images.train_y.numpy(), self.num_workers, split,
                               seed=data_seed, alpha=alpha)
        self.shards = shards
        self.shard_sizes = np.array([len(s) for s in shards])
        held = [shards[k] for k in self.worker_ids]
        m = max(len(s) for s in held)
        # [w, m] global indices of each held worker's images, padded with its first index
        # (never drawn: local draws are < n_k)
        table = np.stack([np.pad(s, (0, m - len(s)), mode="edge") for s in held])
        self.shard_table = torch.as_tensor(table, dtype=torch.int64, device=self.device)
        self.n_held = torch.as_tensor([len(s) for s in held], device=self.device)
        self.train_x = images.train_x.to(self.device)
        self.train_y = images.train_y.to(self.device)
        self.test_x = images.test_x.to(self.device)
        self.test_y = images.test_y.to(self.device)

    def _build_network(self, model, init_seed):
        # Initialise on the CPU under a private seed: x0 is then the same on every device and
        # the global RNG is left alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            net = MODELS[model](BatchStatsNorm2d)
        named = list(net.named_parameters())
        self._names = [n for n, _ in named]
        self._shapes = [p.shape for _, p in named]
        self._sizes = [p.numel() for _, p in named]
        self.dim = sum(self._sizes)
        self._x0 = torch.cat([p.detach().reshape(-1) for _, p in named])
        self._sink: dict = {}
        self._bn_channels = {}
        for name, module in net.named_modules():
            if isinstance(module, BatchStatsNorm2d):
                module.sink, module.stat_name = self._sink, name
                self._bn_channels[name] = module.num_features
        # The module is only a template for functional_call, which supplies every tensor it
        # reads; on the meta device it holds no memory.
        self.net = net.to("meta")

    # -- what the engine calls -------------------------------------------------------------
    @property
    def param_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The network's parameter shapes, in the order of the flat vector (for schemes that
        compress per layer, suite.comm.Env.shapes)."""
        return tuple(tuple(s) for s in self._shapes)

    def x0(self) -> torch.Tensor:
        return self._x0.to(device=self.device, dtype=self.dtype)

    def sample_batch(self, streams, batch_size: int | None) -> CifarBatch:
        """b images per worker, uniform with replacement from its shard, augmented with the
        worker's row of the sampling stream: per image, one uniform picks the image and three
        the crop and flip."""
        if batch_size is None:
            raise ConfigError(
                f"batch_size=full is not supported by task={self.name}: a full local gradient "
                f"is a pass over up to {int(self.shard_sizes.max())} images per worker and "
                f"step; set batch_size to an integer (e.g. 128). Algorithms defined with full "
                f"gradients (dqgd) do not run on this task")
        w = len(self.worker_ids)
        u = streams.uniform(batch_size, 4, dtype=torch.float64)  # [w, b, 4]
        local = (u[..., 0] * self.n_held[:, None]).long().clamp_max(self.n_held[:, None] - 1)
        idx = self.shard_table.gather(1, local)  # [w, b] global image indices
        raw = self.train_x.index_select(0, idx.view(-1))  # [w·b, 3, 32, 32] uint8
        if self.augment:
            raw = cifar_data.augment(raw, u[..., 1:].reshape(-1, 3))
        images = self._layout(cifar_data.normalise(raw, self.dtype))
        return CifarBatch(images.view(w, batch_size, *raw.shape[1:]), self.train_y[idx])

    def grads(self, x: torch.Tensor, batch: CifarBatch) -> torch.Tensor:
        """[w, d] gradients of the held workers' minibatch objectives; x is [d] or [w, d]."""
        w = len(self.worker_ids)
        if x.dim() not in (1, 2) or x.shape[-1] != self.dim or (x.dim() == 2 and len(x) != w):
            raise ValueError(f"x has shape {tuple(x.shape)}; expected [{self.dim}] or "
                             f"[{w}, {self.dim}]")
        if self.grad_mode == "vmap" and w > 1:
            # A shared x is expanded (a view), not vmapped with in_dims=None: with unbatched
            # weights vmap's convolution backward takes a slower path (1.5x on a CPU).
            X = x if x.dim() == 2 else x.expand(w, -1)
            g, (loss, correct, stats) = self._vmapped(X, batch.images, batch.labels)
        else:
            g, loss, correct, stats = self._loop(x, batch)
        if self.weight_decay:
            g = g + self.weight_decay * x  # broadcasts a shared [d] x over the workers
        self._last_batch_size = batch.labels.shape[1]
        self._track(loss, correct, stats)
        return g

    def evaluate(self, x: torch.Tensor) -> dict[str, float]:
        x = x.to(self.dtype)
        with torch.no_grad():
            if self._seen:
                train_loss = float(self._loss_sum) / self._seen
                train_acc = float(self._correct) / self._images
            else:
                train_loss, train_acc = self._score(x, self.train_x, self.train_y, train=True)
            test_loss, test_acc = self._score(x, self.test_x, self.test_y, train=False)
        self._loss_sum.zero_()
        self._correct.zero_()
        self._seen = self._images = 0
        return {"train/loss": train_loss, "train/accuracy": train_acc,
                "test/loss": test_loss, "test/accuracy": test_acc}

    def state_dict(self) -> dict:
        """The task's own state, for checkpoints: the per-worker BN running statistics and
        the train-metric sums since the last evaluation."""
        return {"model": self.model_name, "worker_ids": list(self.worker_ids),
                "running": {n: (m.clone(), v.clone()) for n, (m, v) in self.running.items()},
                "loss_sum": self._loss_sum.clone(), "correct": self._correct.clone(),
                "seen": self._seen, "images": self._images}

    def load_state_dict(self, state: dict) -> None:
        if state["model"] != self.model_name or state["worker_ids"] != self.worker_ids:
            raise ValueError(
                f"task state for model={state['model']} and workers {state['worker_ids']} "
                f"cannot be loaded into model={self.model_name} with workers {self.worker_ids}")
        for name, (mean, var) in state["running"].items():
            self.running[name][0].copy_(mean)  # copy_ moves it to this task's device
            self.running[name][1].copy_(var)
        self._loss_sum.copy_(state["loss_sum"])
        self._correct.copy_(state["correct"])
        self._seen, self._images = state["seen"], state["images"]

    # -- the network as a function of the flat vector --------------------------------------
    def _params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.view(s) for n, t, s in
                zip(self._names, flat.split(self._sizes), self._shapes, strict=True)}

    def _forward(self, flat, images, buffers=None):
        tensors = self._params(flat)
        if buffers:
            tensors.update(buffers)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return functional_call(self.net, tensors, (images,)).to(flat.dtype)

    def _loss(self, flat, images, labels):
        """One worker's minibatch loss; aux: its value, correct count, BN batch statistics."""
        self._sink.clear()
        logits = self._forward(flat, images)
        loss = F.cross_entropy(logits, labels)
        stats = dict(self._sink)
        self._sink.clear()
        correct = (logits.argmax(1) == labels).sum()
        return loss, (loss.detach(), correct, stats)

    def _loop(self, x, batch):
        """The simple path: one worker at a time, the same function as the vmapped path. It
        also serves w = 1, where vmap would only add the cost of its batching rules (which
        split the convolutions' backward in two and decompose BatchNorm's)."""
        out = [self._grad_fn(x[k] if x.dim() == 2 else x, batch.images[k], batch.labels[k])
               for k in range(len(self.worker_ids))]
        g = torch.stack([o[0] for o in out])
        loss = torch.stack([o[1][0] for o in out])
        correct = torch.stack([o[1][1] for o in out])
        stats = {name: tuple(torch.stack([o[1][2][name][i] for o in out]) for i in range(2))
                 for name in self._bn_channels}
        return g, loss, correct, stats

    def _track(self, loss, correct, stats):
        """Fold a step's losses and BN batch statistics into the running values, on the
        device (no host sync on the hot path)."""
        self._loss_sum += loss.detach().sum()
        self._correct += correct.sum()
        self._seen += loss.numel()
        self._images += loss.numel() * self._last_batch_size
        with torch.no_grad():
            for name, (mean, var) in stats.items():
                run_mean, run_var = self.running[name]
                run_mean.lerp_(mean.to(run_mean.dtype), BN_MOMENTUM)
                run_var.lerp_(var.to(run_var.dtype), BN_MOMENTUM)

    def pooled_running_stats(self) -> dict[str, torch.Tensor]:
        """BN buffers for evaluation: the statistics of the union of the held workers'
        batches (mean of means; mean of variances plus variance of means)."""
        out = {}
        for name, (mean, var) in self.running.items():
            pooled_mean = mean.mean(0)
            out[f"{name}.running_mean"] = pooled_mean
            out[f"{name}.running_var"] = var.mean(0) + (mean - pooled_mean).square().mean(0)
        return out

    def _score(self, x, images_u8, labels, *, train: bool) -> tuple[float, float]:
        """Mean cross-entropy and accuracy on the first eval_batches·eval_batch_size images:
        eval mode with the pooled running statistics, or (train=True) batch statistics."""
        n = len(labels)
        if self.eval_batches is not None:
            n = min(n, self.eval_batches * self.eval_batch_size)
        buffers = None if train else self.pooled_running_stats()
        self.net.train(train)
        loss_sum, correct = 0.0, 0.0
        try:
            for start in range(0, n, self.eval_batch_size):
                stop = min(n, start + self.eval_batch_size)
                images = self._layout(cifar_data.normalise(images_u8[start:stop], self.dtype))
                logits = self._forward(x, images, buffers)
                y = labels[start:stop]
                loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
                correct += float((logits.argmax(1) == y).sum())
        finally:
            self.net.train()
            self._sink.clear()
        return loss_sum / n, correct / n

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last \
            else images


def _check_options(*, model, dataset, grad_mode, dtype, weight_decay, eval_batches,
                   eval_batch_size, bf16, channels_last, augment):
    def require(ok, key, value, allowed):
        if not ok:
            raise ConfigError(f"task.{key}={value!r} is not allowed: {allowed}")

    require(model in MODELS, "model", model, f"one of {', '.join(MODELS)}")
    require(dataset in cifar_data.DATASETS, "dataset", dataset,
            f"one of {', '.join(cifar_data.DATASETS)}")
    require(grad_mode in GRAD_MODES, "grad_mode", grad_mode, f"one of {', '.join(GRAD_MODES)}")
    require(dtype in _DTYPES, "dtype", dtype, f"one of {', '.join(_DTYPES)}")
    require(isinstance(weight_decay, (int, float)) and not isinstance(weight_decay, bool)
            and weight_decay >= 0, "weight_decay", weight_decay, "a number >= 0")
    require(eval_batches is None or (isinstance(eval_batches, int) and eval_batches >= 1),
            "eval_batches", eval_batches, "an integer >= 1, or null (the whole test set)")
    require(isinstance(eval_batch_size, int) and eval_batch_size >= 1, "eval_batch_size",
            eval_batch_size, "an integer >= 1")
    for key, value in (("bf16", bf16), ("channels_last", channels_last), ("augment", augment)):
        require(isinstance(value, bool), key, value, "true or false")
    require(not (bf16 and dtype != "float32"), "bf16", bf16,
            "bf16 autocast needs task.dtype=float32")
