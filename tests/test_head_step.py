"""The head's training step without autograd: torch's own step, bit for bit, and torch's step wherever it does not apply."""

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.evaluate import head_step
from pipeline.evaluate.head_step import standalone, training_step


def bits(t):
    return t.detach().contiguous().view(torch.int32)


def layer(dtype=torch.float32, bias=True, n_classes=4):
    torch.manual_seed(5)
    return nn.Linear(1280, n_classes, bias=bias, dtype=dtype)


def batches(n, sizes, dtype=np.float32, n_classes=4):
    rng = np.random.default_rng(11)
    return [(torch.from_numpy(rng.standard_normal((size, 1280)).astype(dtype)),
             torch.from_numpy(rng.integers(0, n_classes, size))) for size in sizes * n]


def steps_both_ways(data, dtype=torch.float32, bias=True, *, lr, weight_decay, n_classes=4):
    """Losses and parameters after each step: ``training_step``'s, and torch's own AdamW ``zero_grad``, ``backward``,
    ``step``."""
    linear = layer(dtype, bias, n_classes)
    step = training_step(linear, lr=lr, weight_decay=weight_decay, batch_sizes=sorted({len(x) for x, _ in data}))
    ours = [(step(x, y), *(bits(p).clone() for p in linear.parameters())) for x, y in data]
    linear = layer(dtype, bias, n_classes)
    optimiser = torch.optim.AdamW(linear.parameters(), lr=lr, weight_decay=weight_decay)
    theirs = []
    for x, y in data:
        optimiser.zero_grad()
        loss = nn.CrossEntropyLoss()(linear(x), y)
        loss.backward()
        optimiser.step()
        theirs.append((loss.item(), *(bits(p).clone() for p in linear.parameters())))
    return step, ours, theirs


def same(ours, theirs):
    return len(ours) == len(theirs) and all(
        a[0] == b[0] and len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a[1:], b[1:]))
        for a, b in zip(ours, theirs))


@pytest.mark.parametrize("lr, weight_decay", [(1e-3, 1e-2), (0.05, 0.0), (3e-4, 0.1)])
def test_the_flat_step_runs_here_and_is_torchs_adamw_step_bit_for_bit(lr, weight_decay):
    step, ours, theirs = steps_both_ways(batches(20, [64, 13]), lr=lr, weight_decay=weight_decay)
    assert isinstance(step, head_step._FlatAdamW)  # on this torch the fast step is the one that runs
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert same([a], [b]), f"step {i}"


def test_the_flat_step_is_torchs_on_two_threads_for_a_layer_large_enough_to_split():
    """37 x 1280 + 37 = 47,397 elements: above torch's grain for splitting elementwise work over threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        step, ours, theirs = steps_both_ways(batches(6, [64, 13], n_classes=37), lr=1e-3, weight_decay=1e-2,
                                             n_classes=37)
    finally:
        torch.set_num_threads(threads)
    assert isinstance(step, head_step._FlatAdamW) and same(ours, theirs)


def test_the_probe_leaves_torchs_generators_alone(monkeypatch):
    """The head's dropout draws from torch's default generator after the probe has run: it must not draw."""
    monkeypatch.setattr(head_step, "_probed", {})
    linear = layer()  # seeds and draws torch's generator itself: the state to keep is the one after it
    before = torch.get_rng_state()
    step = training_step(linear, lr=1e-3, weight_decay=1e-2, batch_sizes=[64, 13])
    step(*batches(1, [64])[0])
    assert isinstance(step, head_step._FlatAdamW) and head_step._probed  # the probe ran here
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("case", ["float64", "no bias"])
def test_torchs_own_step_runs_where_the_flat_step_does_not_apply(case):
    dtype, bias = (torch.float64, True) if case == "float64" else (torch.float32, False)
    step, ours, theirs = steps_both_ways(batches(3, [64], np.float64 if case == "float64" else np.float32), dtype,
                                         bias, lr=1e-3, weight_decay=1e-2)
    assert not isinstance(step, head_step._FlatAdamW)
    assert same(ours, theirs)


@pytest.mark.parametrize("where", ["a weight", "the bias", "the loss"])
def test_the_probe_catches_a_step_one_bit_off(where):
    """The probe guards the flat step: one that differs from torch's by a single bit anywhere it compares is refused."""
    settings = {**head_step._ADAMW_DEFAULTS, "lr": 1e-3, "weight_decay": 1e-2}
    at = {"a weight": 7, "the bias": 4 * 1280 + 2}.get(where)

    class OneBitOff(head_step._FlatAdamW):
        def __call__(self, x, y):
            loss = super().__call__(x, y)
            if at is None:
                return float(np.nextafter(np.float32(loss), np.float32(np.inf)))
            self.flat[at] = torch.from_numpy(np.nextafter(self.flat[at:at + 1].numpy(), np.float32(np.inf)))[0]
            return loss

    assert head_step._probe((4, 1280), 64, settings)
    assert not head_step._probe((4, 1280), 64, settings, flat_step=OneBitOff)


def test_neither_the_flat_step_nor_its_probe_builds_an_optimiser():
    """Building torch's first optimiser in a process imports torch._dynamo: seconds in each CV worker."""
    import subprocess
    import sys

    code = ("import sys, torch; from pipeline.evaluate.head_step import training_step; "
            "step = training_step(torch.nn.Linear(1280, 4), lr=1e-3, weight_decay=1e-2, batch_sizes=[64, 13]); "
            "step(torch.ones(64, 1280), torch.zeros(64, dtype=torch.long)); "
            "print(type(step).__name__, 'torch._dynamo' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["_FlatAdamW", "False"]


def test_standalone_gives_each_parameter_its_own_storage_again():
    linear = layer()
    step = training_step(linear, lr=1e-3, weight_decay=1e-2, batch_sizes=[8])
    step(*batches(1, [8])[0])
    assert linear.weight.untyped_storage().data_ptr() == linear.bias.untyped_storage().data_ptr()  # one flat buffer
    before = [bits(p).clone() for p in linear.parameters()]
    standalone(linear)
    assert linear.weight.untyped_storage().data_ptr() != linear.bias.untyped_storage().data_ptr()
    assert linear.bias.untyped_storage().nbytes() == 4 * 4
    assert all(torch.equal(bits(p), b) for p, b in zip(linear.parameters(), before))
