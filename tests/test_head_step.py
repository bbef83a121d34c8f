"""The head's training step without autograd: torch's own step, bit for bit, and torch's step wherever it does not apply."""

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.evaluate import head_step
from pipeline.evaluate.head_step import standalone, training_step


def bits(t):
    return t.detach().contiguous().view(torch.int32)


def layer_and_optimiser(dtype=torch.float32, **options):
    torch.manual_seed(5)
    linear = nn.Linear(1280, 4, dtype=dtype)
    return linear, torch.optim.AdamW(linear.parameters(), **options)


def batches(n, sizes, dtype=np.float32):
    rng = np.random.default_rng(11)
    return [(torch.from_numpy(rng.standard_normal((size, 1280)).astype(dtype)), torch.from_numpy(rng.integers(0, 4, size)))
            for size in sizes * n]


def steps_both_ways(data, dtype=torch.float32, **options):
    """Losses and parameters after each step: ``training_step``'s, and torch's own ``zero_grad``, ``backward``, ``step``."""
    linear, optimiser = layer_and_optimiser(dtype, **options)
    step = training_step(linear, optimiser, sorted({len(x) for x, _ in data}))
    ours = [(step(x, y), bits(linear.weight).clone(), bits(linear.bias).clone()) for x, y in data]
    linear, optimiser = layer_and_optimiser(dtype, **options)
    theirs = []
    for x, y in data:
        optimiser.zero_grad()
        loss = nn.CrossEntropyLoss()(linear(x), y)
        loss.backward()
        optimiser.step()
        theirs.append((loss.item(), bits(linear.weight).clone(), bits(linear.bias).clone()))
    return step, ours, theirs


@pytest.mark.parametrize("options", [dict(lr=1e-3, weight_decay=1e-2), dict(lr=0.05, weight_decay=0.0),
                                     dict(lr=3e-4, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)],
                         ids=["the head's settings", "no weight decay", "other betas and eps"])
def test_the_flat_step_runs_here_and_is_torchs_step_bit_for_bit(options):
    step, ours, theirs = steps_both_ways(batches(20, [64, 13]), **options)
    assert isinstance(step, head_step._FlatAdamW)  # on this torch the fast step is the one that runs
    for i, ((loss, weight, bias), (their_loss, their_weight, their_bias)) in enumerate(zip(ours, theirs)):
        assert loss == their_loss and torch.equal(weight, their_weight) and torch.equal(bias, their_bias), i


@pytest.mark.parametrize("case", ["amsgrad", "float64", "sgd", "optimiser with state"])
def test_torchs_own_step_runs_where_the_flat_step_does_not_apply(case):
    dtype = torch.float64 if case == "float64" else torch.float32
    linear, optimiser = layer_and_optimiser(dtype, lr=1e-3, amsgrad=case == "amsgrad")
    if case == "sgd":
        optimiser = torch.optim.SGD(linear.parameters(), lr=0.1)
    if case == "optimiser with state":
        nn.CrossEntropyLoss()(linear(torch.ones(2, 1280)), torch.tensor([0, 1])).backward()
        optimiser.step()
    step = training_step(linear, optimiser, [64])
    assert not isinstance(step, head_step._FlatAdamW)
    if case in ("amsgrad", "float64"):
        _, ours, theirs = steps_both_ways(batches(3, [64], np.float64 if case == "float64" else np.float32), dtype,
                                          lr=1e-3, amsgrad=case == "amsgrad")
        assert all(a[0] == b[0] and torch.equal(a[1], b[1]) for a, b in zip(ours, theirs))


def test_the_probe_catches_a_step_one_bit_off():
    """The probe guards the flat step: one that differs from torch's by a single bit in one weight is refused."""
    settings = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}

    class OneBitOff(head_step._FlatAdamW):
        def _adamw(self):
            super()._adamw()
            self.flat[7] = torch.from_numpy(np.nextafter(self.flat[7:8].numpy(), np.float32(np.inf)))[0]

    assert head_step._probe((4, 1280), 64, settings)
    assert not head_step._probe((4, 1280), 64, settings, flat_step=OneBitOff)


def test_standalone_gives_each_parameter_its_own_storage_again():
    linear, optimiser = layer_and_optimiser(lr=1e-3)
    step = training_step(linear, optimiser, [8])
    step(*batches(1, [8])[0])
    assert linear.weight.untyped_storage().data_ptr() == linear.bias.untyped_storage().data_ptr()  # one flat buffer
    before = [bits(p).clone() for p in linear.parameters()]
    standalone(linear)
    assert linear.weight.untyped_storage().data_ptr() != linear.bias.untyped_storage().data_ptr()
    assert linear.bias.untyped_storage().nbytes() == 4 * 4
    assert all(torch.equal(bits(p), b) for p, b in zip(linear.parameters(), before))
