import numpy as np
import pytest
import torch

from pipeline.evaluate import _torch_stream


def test_the_block_stream_is_what_runs_with_this_torch():
    assert _torch_stream.mismatch() is None
    assert _torch_stream.matches_torch()  # else dropout_ runs torch's own dropout: same bits, slower


def unmoved_bernoulli(n, keep):
    """The right mask, but the generator left where it was."""
    saved = torch.get_rng_state()
    mask = torch.empty(n).bernoulli_(keep).numpy()
    torch.set_rng_state(saved)
    return mask


@pytest.mark.parametrize("draw", [lambda n, keep: np.ones(n, dtype=np.float32), unmoved_bernoulli])
def test_the_check_finds_a_draw_that_is_not_torchs_and_leaves_the_generator_alone(draw):
    torch.manual_seed(2)
    before = torch.get_rng_state()
    assert _torch_stream.mismatch(draw) == "it draws other masks"
    assert torch.equal(torch.get_rng_state(), before)


def test_keep_mask_refuses_a_keep_that_is_not_a_probability():
    with pytest.raises(ValueError, match="keep=1.5"):
        _torch_stream.keep_mask(10, 1.5)


@pytest.mark.parametrize("words_before", [0, 1, 7, 623, 624, 1250])
@pytest.mark.parametrize("n", [1, 311, 312, 5000])
def test_uniform_draws_torch_rands_doubles_and_moves_the_generator_as_it_does(words_before, n):
    torch.manual_seed(3)
    torch.rand(words_before)  # float32: one word each, so the stream can start mid-block or on an odd word
    saved = torch.get_rng_state()
    expected = torch.rand(n, dtype=torch.float64).numpy()
    expected_next = torch.rand(3, dtype=torch.float64)
    torch.set_rng_state(saved)
    got = _torch_stream.uniform(n)
    assert np.array_equal(got.view(np.uint64), expected.view(np.uint64))
    assert torch.equal(torch.rand(3, dtype=torch.float64), expected_next)


@pytest.mark.parametrize("keep", [0.8, 0.5, 0.63, 0.1, 0.0, 1.0])
def test_keep_mask_is_torchs_bernoulli(keep):
    torch.manual_seed(11)
    expected = torch.empty(4099).bernoulli_(keep).numpy()
    after = torch.get_rng_state()
    torch.manual_seed(11)
    assert np.array_equal(_torch_stream.keep_mask(4099, keep), expected)
    assert torch.equal(torch.get_rng_state(), after)


def test_dropped_rows_refuses_what_its_compiled_loop_cannot_read_safely():
    X, out = np.zeros((10, 8), dtype=np.float32), np.zeros((2, 8), dtype=np.float32)
    for bad in [dict(rows=np.array([0, 10])), dict(rows=np.array([-1, 2])), dict(X=X.astype(np.float64)),
                dict(X=np.asfortranarray(X)), dict(out=np.zeros((3, 8), dtype=np.float32)), dict(scale=0.1),
                dict(rows=np.array([[0], [9]])), dict(keep=1.0), dict(keep=0.0)]:
        args = {"X": X, "rows": np.array([0, 9]), "keep": 0.8, "scale": float(np.float32(1.25)), "out": out, **bad}
        with pytest.raises(ValueError, match="dropped_rows takes"):
            _torch_stream.dropped_rows(**args)
