"""The doubles ``torch.rand(n, dtype=torch.float64)`` would return, drawn in blocks.

torch's default CPU generator is MT19937. ``torch.rand`` in float64 (and ``bernoulli_``, which
compares the same doubles with p) takes two 32-bit words per double, joins them high word first,
keeps the low 53 bits and scales by 2**-53, one element at a time behind a serial kernel. Here the
same words are drawn a block of 624 at a time by compiled loops, from torch's own state, which is
then written back, so torch's stream continues exactly where ``torch.rand`` would have left it.

The state is torch's ``get_rng_state`` layout, which torch does not promise to keep; so
``matches_torch`` compares this stream with ``torch.rand``'s, bit for bit, once per process, and
callers use ``torch.rand`` itself where it does not match.
"""

from __future__ import annotations

import functools
import logging

import numba
import numpy as np
import torch

log = logging.getLogger(__name__)

_N, _M = 624, 397  # MT19937's state length and shift
_CHUNK = 2048  # doubles drawn per pass: 16 KiB of words, kept in cache
# torch's CPU generator state (get_rng_state): the legacy C struct, 5,056 bytes
_STATE = np.dtype([("seed", "<u8"), ("left", "<i4"), ("seeded", "<i4"), ("next", "<u8"),
                   ("words", "<u8", (_N,)), ("normal", "<f8", (3,)), ("normal_valid", "<i4"), ("pad", "<i4"),
                   ("float_normal", "<f4"), ("float_normal_valid", "u1"), ("pad2", "u1", (3,))])


@numba.njit(cache=True, nogil=True, inline="always")
def _mix(upper, lower):
    y = (upper & np.uint32(0x80000000)) | (lower & np.uint32(0x7FFFFFFF))
    return (y >> np.uint32(1)) ^ (np.uint32(0x9908B0DF) * (y & np.uint32(1)))


@numba.njit(cache=True, nogil=True)
def _twist(mt):
    """MT19937's next block, in place (three loops without a modulo, so they vectorise)."""
    for i in range(_N - _M):
        mt[i] = mt[i + _M] ^ _mix(mt[i], mt[i + 1])
    for i in range(_N - _M, _N - 1):
        mt[i] = mt[i + _M - _N] ^ _mix(mt[i], mt[i + 1])
    mt[_N - 1] = mt[_M - 1] ^ _mix(mt[_N - 1], mt[0])


@numba.njit(cache=True, nogil=True)
def _temper(src, dst):
    for j in range(src.size):
        y = src[j]
        y ^= y >> np.uint32(11)
        y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
        y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
        y ^= y >> np.uint32(18)
        dst[j] = y


@numba.njit(cache=True, nogil=True)
def _words(mt, left, next_, words):
    """Fill ``words`` with the engine's next outputs; returns torch's (left, next) bookkeeping after them."""
    k = 0
    while k < words.size:
        if left == 1:  # torch's engine twists when a draw finds left == 1
            _twist(mt)
            left, next_ = _N + 1, 0
        m = min(left - 1, words.size - k)
        _temper(mt[next_:next_ + m], words[k:k + m])  # slices, not offsets: this loop vectorises
        k += m
        left -= m
        next_ += m
    return left, next_


@numba.njit(cache=True, nogil=True, inline="always")
def _double(words, i):
    """torch's uniform double from words 2i (high) and 2i+1 (low): 53 bits times 2**-53, exact."""
    return (np.float64(words[2 * i] & np.uint32(0x1FFFFF)) * 4294967296.0 + np.float64(words[2 * i + 1])) * 2.0 ** -53


@numba.njit(cache=True, nogil=True)
def _fill(mt, left, next_, keep, out):
    """``out[i]``: the i-th next double, or with ``keep`` > 0 whether it is below ``keep`` (1.0/0.0).

    Words are drawn a chunk at a time into a small buffer that stays in cache.
    """
    words = np.empty(2 * _CHUNK, dtype=np.uint32)
    for start in range(0, out.size, _CHUNK):
        m = min(_CHUNK, out.size - start)
        left, next_ = _words(mt, left, next_, words[:2 * m])
        if keep > 0:
            for i in range(m):
                out[start + i] = 1.0 if _double(words, i) < keep else 0.0
        else:
            for i in range(m):
                out[start + i] = _double(words, i)
    return left, next_


def _draw(out: np.ndarray, keep: float) -> np.ndarray:
    raw = torch.get_rng_state()
    state = raw.numpy().view(_STATE)
    mt = state["words"][0].astype(np.uint32)
    left, next_ = _fill(mt, int(state["left"][0]), int(state["next"][0]), keep, out)
    state["words"][0], state["left"][0], state["next"][0] = mt, left, next_
    torch.set_rng_state(raw)  # the generator moves past the doubles drawn, as torch's kernels move it
    return out


def uniform(n: int) -> np.ndarray:
    """``torch.rand(n, dtype=torch.float64)``, from and advancing the same generator."""
    return _draw(np.empty(n, dtype=np.float64), 0.0)


def keep_mask(n: int, keep: float) -> np.ndarray:
    """``torch.empty(n).bernoulli_(keep)`` (0 < keep): 1.0 where the next double is below ``keep``, else 0.0."""
    return _draw(np.empty(n, dtype=np.float32), keep)


@functools.cache
def matches_torch() -> bool:
    """Whether ``uniform`` draws what ``torch.rand`` draws, and leaves the generator as it does."""
    saved = torch.get_rng_state()
    try:
        if saved.numel() != _STATE.itemsize:
            raise ValueError(f"{saved.numel()} bytes")
        expected = torch.rand(1500, dtype=torch.float64).numpy()  # 3,000 words: several twists
        expected_state = torch.get_rng_state()
        torch.set_rng_state(saved)
        got, mask = uniform(1000), keep_mask(500, 0.5)
        if np.array_equal(got.view(np.uint64), expected[:1000].view(np.uint64)) and \
                np.array_equal(mask, (expected[1000:] < 0.5).astype(np.float32)) and \
                torch.equal(torch.get_rng_state(), expected_state):
            return True
        reason = "it draws other numbers"
    except Exception as error:  # whatever goes wrong (a state torch rejects, say), torch.rand is the answer
        reason = f"{type(error).__name__}: {error}"
    finally:
        torch.set_rng_state(saved)
    log.warning("torch %s's CPU generator is not the one expected (%s): dropout draws with torch.rand, slower",
                torch.__version__, reason)
    return False
