"""One training step of the linear head: ``Linear`` under ``CrossEntropyLoss`` and ``AdamW``, bit for bit, minus autograd.

At batch 64 a step's arithmetic takes microseconds; ``zero_grad(); loss.backward(); optimiser.step()``
spends about a millisecond on the CPU building autograd's graph and keeping the optimiser's books.
``training_step`` calls the kernels that autograd and AdamW's single-tensor loop (torch's default on
the CPU) call, in their order, with the weight and bias held as views of one buffer, so that each of
AdamW's elementwise operations is one call for both. A probe per layer shape, batch size, setting and
thread count compares its bits with autograd and torch's functional AdamW (what ``AdamW.step``
calls); wherever the probe fails or does not apply (a GPU, float64), torch's own step runs.
``benchmarks/head_step.py`` times the head's training loop with torch's modules and with this step.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# x (a batch of rows, already dropped out), y (their labels) -> the batch's mean loss
Step = Callable[[torch.Tensor, torch.Tensor], float]

_MEAN, _IGNORE_INDEX = 1, -100  # nll_loss's reduction code for "mean"; CrossEntropyLoss's default ignore_index
_probed: dict[tuple, bool] = {}
_LOCK = threading.Lock()


def training_step(linear: nn.Linear, *, lr: float, weight_decay: float, batch_sizes: Sequence[int]) -> Step:
    """A function that takes one step of ``AdamW(linear.parameters(), lr=lr, weight_decay=weight_decay)`` on
    ``CrossEntropyLoss()(linear(x), y)`` and returns the loss.

    The flat step when ``linear`` is a float32 layer with a bias on the CPU and the probe finds its bits equal
    torch's for these shapes (``batch_sizes``: every batch size the loop will use); otherwise torch's own step.
    Only then is the optimiser built: its first construction in a process imports ``torch._dynamo`` (2.1 to
    2.6 s, measured), which the flat step and the probe avoid. The flat step makes ``linear``'s parameters views of
    its buffer: call ``standalone`` on them when training is done.
    """
    weight, bias = linear.weight, linear.bias
    if (_ADAMW_DEFAULTS is not None and bias is not None and weight.device.type == "cpu"
            and weight.dtype == bias.dtype == torch.float32):
        settings = {**_ADAMW_DEFAULTS, "lr": float(lr), "weight_decay": float(weight_decay)}
        if all(_flat_step_matches(weight.shape, size, settings) for size in sorted(set(batch_sizes))):
            return _FlatAdamW(linear, settings)
    return _torch_step(linear, torch.optim.AdamW(linear.parameters(), lr=lr, weight_decay=weight_decay))


def standalone(module: nn.Module) -> None:
    """Give each parameter its own storage again, as a module fresh from torch has (and as it is saved)."""
    for parameter in module.parameters():
        parameter.data = parameter.data.clone()


def _torch_step(linear: nn.Linear, optimiser: torch.optim.Optimizer) -> Step:
    loss_fn = nn.CrossEntropyLoss()

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        optimiser.zero_grad()
        loss = loss_fn(linear(x), y)
        loss.backward()
        optimiser.step()
        return loss.item()

    return step


def _adamw_defaults() -> dict[str, Any] | None:
    """AdamW's default betas and eps, read from its signature (as its constructor would take them); None where a
    torch spells them otherwise (then torch's own step runs)."""
    try:
        parameters = inspect.signature(torch.optim.AdamW.__init__).parameters
        return {"betas": tuple(map(float, parameters["betas"].default)), "eps": float(parameters["eps"].default)}
    except (KeyError, TypeError, ValueError):
        return None


_ADAMW_DEFAULTS = _adamw_defaults()


class _FlatAdamW:
    """The flat step: the weight and bias as views of one buffer, AdamW's moments as buffers of its size."""

    def __init__(self, linear: nn.Linear, settings: dict[str, Any]) -> None:
        weight, bias = linear.weight, linear.bias
        size = weight.numel()
        self.flat = torch.cat([weight.detach().reshape(-1), bias.detach()])  # the weight first, as torch steps it
        self.weight, self.bias = self.flat[:size].view_as(weight), self.flat[size:]
        weight.data, bias.data = self.weight, self.bias
        self.grad = torch.empty_like(self.flat)
        self.grad_weight, self.grad_bias = self.grad[:size].view_as(weight), self.grad[size:]
        self.exp_avg, self.exp_avg_sq, self.denom = (torch.zeros_like(self.flat) for _ in range(3))
        self.lr, (self.beta1, self.beta2), self.eps, self.decay = (settings[k] for k in ("lr", "betas", "eps",
                                                                                            "weight_decay"))
        self.steps = 0
        self.one = torch.ones(())  # d loss / d loss, where backward starts

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float:
        # forward and backward as autograd runs them for linear (addmm) and cross_entropy (log_softmax, nll_loss)
        log_p = torch.log_softmax(F.linear(x, self.weight, self.bias), 1)
        loss, total_weight = torch.ops.aten.nll_loss_forward(log_p, y, None, _MEAN, _IGNORE_INDEX)
        grad_log_p = torch.ops.aten.nll_loss_backward(self.one, log_p, y, None, _MEAN, _IGNORE_INDEX, total_weight)
        grad_logits = torch.ops.aten._log_softmax_backward_data(grad_log_p, log_p, 1, log_p.dtype)
        torch.mm(grad_logits.t(), x, out=self.grad_weight)  # addmm's backward for a weight passed transposed
        torch.sum(grad_logits, 0, out=self.grad_bias)
        self._adamw()
        return loss.item()

    def _adamw(self) -> None:
        """AdamW's single-tensor update (decoupled weight decay, no amsgrad), one call per operation for both."""
        lr, beta1, beta2, eps, decay = self.lr, self.beta1, self.beta2, self.eps, self.decay
        self.steps += 1
        if decay != 0:
            self.flat.mul_(1 - lr * decay)
        self.exp_avg.lerp_(self.grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(self.grad, self.grad, value=1 - beta2)
        step = float(self.steps)
        step_size = lr / (1 - beta1 ** step)
        torch.sqrt(self.exp_avg_sq, out=self.denom).div_((1 - beta2 ** step) ** 0.5).add_(eps)
        self.flat.addcdiv_(self.exp_avg, self.denom, value=-step_size)


def _flat_step_matches(shape: torch.Size, batch_size: int, settings: dict[str, Any]) -> bool:
    """Whether the flat step and torch's give the same bits for this layer shape and batch size (once per process)."""
    key = (tuple(shape), batch_size, tuple(sorted(settings.items())), torch.get_num_threads())
    with _LOCK:
        if key not in _probed:
            try:
                _probed[key] = _probe(tuple(shape), batch_size, settings)
            except Exception:  # noqa: BLE001 - a kernel this torch lacks or treats otherwise: its own step runs
                _probed[key] = False
        return _probed[key]


def _probe(shape: tuple[int, int], batch_size: int, settings: dict[str, Any], flat_step: type | None = None) -> bool:
    """Three steps both ways from the same start on random rows (drawn by numpy: torch's generators are untouched).

    Torch's way is autograd and the AdamW update function that ``AdamW.step`` calls
    (``_functional_adamw_step``), with the arguments and initial state it passes on the CPU: the optimiser itself is not built (see
    ``training_step``); the tests compare the flat step with ``AdamW`` itself.

    ``flat_step``: the flat step's class (``_FlatAdamW``; a test hands it one that is off by a bit).
    """
    flat_step = flat_step or _FlatAdamW
    n_classes, dim = shape
    rng = np.random.default_rng(0)
    batches = [(torch.from_numpy(rng.standard_normal((batch_size, dim), dtype=np.float32)),
                torch.from_numpy(rng.integers(0, n_classes, batch_size))) for _ in range(3)]
    start = [torch.from_numpy(rng.standard_normal(s, dtype=np.float32) * np.float32(0.03)) for s in (shape, n_classes)]
    layers = []
    for flat in (False, True):
        linear = nn.Linear(dim, n_classes, device="meta")  # no draw from torch's generator
        linear.weight, linear.bias = (nn.Parameter(t.clone()) for t in start)
        step = flat_step(linear, settings) if flat else _functional_adamw_step(linear, settings)
        losses = [step(x, y) for x, y in batches]
        layers.append((losses, linear.weight.detach(), linear.bias.detach()))
    (losses, weight, bias), (flat_losses, flat_weight, flat_bias) = layers
    return (losses == flat_losses and torch.equal(weight.view(torch.int32), flat_weight.view(torch.int32))
            and torch.equal(bias.view(torch.int32), flat_bias.view(torch.int32)))


def _functional_adamw_step(linear: nn.Linear, settings: dict[str, Any]) -> Step:
    """Torch's step without the optimiser object: autograd, then torch's AdamW update called as ``AdamW.step``
    calls it: ``adam(..., decoupled_weight_decay=True)`` since torch 2.7, the ``adamw`` function before (where
    its arguments differ, the probe fails and torch's own step runs)."""
    from torch.optim import adam as adam_module  # noqa: PLC0415 - torch's own update, the probe's reference

    if "decoupled_weight_decay" in inspect.signature(adam_module.adam).parameters:
        update = functools.partial(adam_module.adam, decoupled_weight_decay=True)
    else:
        from torch.optim.adamw import adamw as update  # noqa: PLC0415

    params = [linear.weight, linear.bias]
    exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
    exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
    steps = [torch.tensor(0.0) for _ in params]
    loss_fn = nn.CrossEntropyLoss()
    beta1, beta2 = settings["betas"]

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        for p in params:
            p.grad = None
        loss = loss_fn(linear(x), y)
        loss.backward()
        with torch.no_grad():
            update(params, [p.grad for p in params], exp_avgs, exp_avg_sqs, [], steps, foreach=None, capturable=False,
                   differentiable=False, fused=None, grad_scale=None, found_inf=None, has_complex=False, amsgrad=False,
                   beta1=beta1, beta2=beta2, lr=settings["lr"], weight_decay=settings["weight_decay"],
                   eps=settings["eps"], maximize=False)
        return loss.item()

    return step
