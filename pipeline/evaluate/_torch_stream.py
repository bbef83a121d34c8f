"""Dropout's mask as torch draws it on the CPU, ``bernoulli_(keep)``, drawn in compiled loops.

torch's default CPU generator is MT19937. ``bernoulli_`` with a scalar p (as ``torch.rand`` in
float64) takes two 32-bit words per element, joins them high word first, keeps the low 53 bits,
scales by 2**-53 and compares with p, one element at a time behind a serial kernel. Here the words
are generated (a twist every 624) and tempered in chunks, from torch's own state, which is then
written back, so torch's stream continues exactly where ``bernoulli_`` would have left it.

That holds for the torch and CPU it was checked on: the state is torch's ``get_rng_state`` layout,
which torch does not promise to keep, and some torch builds draw ``bernoulli_`` from MKL's own
generator on Intel CPUs. So ``matches_torch`` compares the masks and the generator's state after them
with ``bernoulli_``'s, once per process, and callers use torch's own dropout where they differ.
One thread at a time: the state is read, advanced and written back under a lock, but a draw by
torch itself in another thread meanwhile would be lost (the pipeline's fits run in processes).
"""

from __future__ import annotations

import functools
import logging
import threading

import numba
import numpy as np
import torch

log = logging.getLogger(__name__)

_N, _M = 624, 397  # MT19937's state length and shift
_CHUNK = 2048  # doubles drawn per pass: 16 KiB of words, kept in cache
_LOCK = threading.Lock()
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
def _fill(mt, left, next_, mask, keep, out):
    """``out[i]``: the i-th next double, or with ``mask`` whether it is below ``keep`` (1.0 or 0.0).

    Words are drawn a chunk at a time into a small buffer that stays in cache.
    """
    words = np.empty(2 * _CHUNK, dtype=np.uint32)
    for start in range(0, out.size, _CHUNK):
        m = min(_CHUNK, out.size - start)
        left, next_ = _words(mt, left, next_, words[:2 * m])
        if mask:
            for i in range(m):
                out[start + i] = 1.0 if _double(words, i) < keep else 0.0
        else:
            for i in range(m):
                out[start + i] = _double(words, i)
    return left, next_


def _draw(out: np.ndarray, mask: bool, keep: float) -> np.ndarray:
    with _LOCK:
        raw = torch.get_rng_state()
        state = raw.numpy().view(_STATE)
        mt = state["words"][0].astype(np.uint32)
        left, next_ = int(state["left"][0]), int(state["next"][0])
        if not 1 <= left <= _N or next_ + left - 1 > _N:
            raise ValueError(f"torch's generator state has left={left}, next={next_}: not an MT19937 position")
        left, next_ = _fill(mt, left, next_, mask, keep, out)
        state["words"][0], state["left"][0], state["next"][0] = mt, left, next_
        torch.set_rng_state(raw)  # the generator moves past the draws, as torch's kernels move it
    return out


def uniform(n: int) -> np.ndarray:
    """The stream's next ``n`` doubles: what ``torch.rand(n, dtype=torch.float64)`` draws (the masks' test)."""
    return _draw(np.empty(n, dtype=np.float64), False, 0.0)


def keep_mask(n: int, keep: float) -> np.ndarray:
    """``torch.empty(n).bernoulli_(keep)``: 1.0 where the next double is below ``keep``, else 0.0."""
    if not 0 <= keep <= 1:
        raise ValueError(f"keep={keep} is not a probability")
    return _draw(np.empty(n, dtype=np.float32), True, keep)


def mismatch(draw=keep_mask) -> str | None:
    """Why ``draw`` does not draw ``bernoulli_``'s masks, or leave the generator as it does; None if it does.

    Compared over 1,500 elements (several twists) at two probabilities; the generator is left as it was.
    """
    saved = torch.get_rng_state()
    try:
        if saved.numel() != _STATE.itemsize:
            return f"its state has {saved.numel()} bytes, not {_STATE.itemsize}"
        for keep in (0.5, 0.8):
            torch.set_rng_state(saved)
            expected = torch.empty(1500).bernoulli_(keep).numpy()
            after = torch.get_rng_state()
            torch.set_rng_state(saved)
            if not np.array_equal(draw(1500, keep), expected) or not torch.equal(torch.get_rng_state(), after):
                return "it draws other masks"
        return None
    except Exception as error:  # whatever goes wrong (a state torch rejects, say), torch's dropout is the answer
        return f"{type(error).__name__}: {error}"
    finally:
        torch.set_rng_state(saved)


@functools.cache
def matches_torch() -> bool:
    """Whether ``keep_mask`` is ``bernoulli_`` with this torch on this CPU (checked once per process)."""
    reason = mismatch()
    if reason is not None:
        log.warning("dropout's mask is drawn by torch itself (slower): the block stream does not match torch %s "
                    "here (%s)", torch.__version__, reason)
    return reason is None
