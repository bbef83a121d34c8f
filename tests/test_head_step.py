"""The head's training step without autograd: torch's own step, bit for bit, and torch's step wherever it does not apply."""

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.evaluate import head_step
from pipeline.evaluate.head_step import standalone, training_step


def bits(t):
    return t.detach().contiguous().view(torch.int32)


def layer(dtype=torch.float32, bias=True):
    torch.manual_seed(5)
    return nn.Linear(1280, 4, bias=bias, dtype=dtype)


def batches(n, sizes, dtype=np.float32):
    rng = np.random.default_rng(11)
    return [(torch.from_numpy(rng.standard_normal((size, 1280)).astype(dtype)), torch.from_numpy(rng.integers(0, 4, size)))
            for size in sizes * n]


def steps_both_ways(data, dtype=torch.float32, bias=True, *, lr, weight_decay):
    """Losses and parameters after each step: ``training_step``'s, and torch's own AdamW ``zero_grad``, ``backward``,
    ``step``."""
    linear = layer(dtype, bias)
    step = training_step(linear, lr=lr, weight_decay=weight_decay, batch_sizes=sorted({len(x) for x, _ in data}))
    ours = [(step(x, y), *(bits(p).clone() for p in linear.parameters())) for x, y in data]
    linear = layer(dtype, bias)
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


@pytest.mark.parametrize("case", ["float64", "no bias"])
def test_torchs_own_step_runs_where_the_flat_step_does_not_apply(case):
    dtype, bias = (torch.float64, True) if case == "float64" else (torch.float32, False)
    step, ours, theirs = steps_both_ways(batches(3, [64], np.float64 if case == "float64" else np.float32), dtype,
                                         bias, lr=1e-3, weight_decay=1e-2)
    assert not isinstance(step, head_step._FlatAdamW)
    assert same(ours, theirs)


def test_the_probe_catches_a_step_one_bit_off():
    """The probe guards the flat step: one that differs from torch's by a single bit in one weight is refused."""
    settings = {**head_step._ADAMW_DEFAULTS, "lr": 1e-3, "weight_decay": 1e-2}

    class OneBitOff(head_step._FlatAdamW):
        def _adamw(self):
            super()._adamw()
            self.flat[7] = torch.from_numpy(np.nextafter(self.flat[7:8].numpy(), np.float32(np.inf)))[0]

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
