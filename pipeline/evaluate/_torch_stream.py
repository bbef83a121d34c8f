"""Dropout's mask as torch draws it on the CPU, ``bernoulli_(keep)``, drawn in compiled loops.

torch's default CPU generator is MT19937. ``bernoulli_`` with a scalar p (as ``torch.rand`` in
float64) takes two 32-bit words per element, joins them high word first, keeps the low 53 bits,
scales by 2**-53 and compares with p, one element at a time behind a serial kernel. Here the words
are generated (a twist every 624) and tempered in chunks, from torch's own state, which is then
written back, so torch's stream continues exactly where ``bernoulli_`` would have left it.
``dropped_rows`` goes one step further for the linear head's training: it gathers a batch's rows,
draws their mask and scales them in one pass, which is what ``index_select`` and dropout's
``bernoulli_``, ``div_`` and ``mul_`` make of them, bit for bit.

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
import math
import threading

import numba
import numpy as np
import torch

log = logging.getLogger(__name__)

_N, _M = 624, 397  # MT19937's state length and shift
_CHUNK = 2048  # doubles drawn per pass: 16 KiB of words, kept in cache
_LOCK = threading.RLock()
_WORDS = [np.empty(0, dtype=np.uint32)]  # dropped_rows' words, kept from call to call (page faults cost) under _LOCK
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


@numba.njit(cache=True, nogil=True, inline="always")
def _bits(pairs, i):
    """The i-th double's 53 bits from the words viewed as int64 pairs (little-endian: the high word, 2i, in the
    low half). The double is these bits times 2**-53, exactly, so it is below ``keep`` when they are below
    ceil(keep * 2**53): an integer comparison (signed, as AVX2 compares), which vectorises where the
    conversion to a double does not."""
    p = pairs[i]
    return ((p & np.int64(0x1FFFFF)) << np.int64(32)) | ((p >> np.int64(32)) & np.int64(0xFFFFFFFF))


@numba.njit(cache=True, nogil=True)
def _doubles(mt, left, next_, out):
    """``out[i]``: the i-th next double. Words are drawn a chunk at a time into a small buffer that stays in cache."""
    words = np.empty(2 * _CHUNK, dtype=np.uint32)
    for start in range(0, out.size, _CHUNK):
        m = min(_CHUNK, out.size - start)
        left, next_ = _words(mt, left, next_, words[:2 * m])
        for i in range(m):
            out[start + i] = _double(words, i)
    return left, next_


@numba.njit(cache=True, nogil=True)
def _drop_rows(mt, left, next_, X, rows, below, scale, words, out):
    """``out[r, j] = X[rows[r], j] * noise``, the noise ``scale`` where the draw is kept, else 0 (float32
    products, as torch's ``mul_``), drawn in ``out``'s order: all the words first (``words``, two per element),
    then one pass that vectorises."""
    left, next_ = _words(mt, left, next_, words)
    d = X.shape[1]
    pairs, limit, kept, dropped = words.view(np.int64), np.int64(below), np.float32(scale), np.float32(0)
    for r in range(rows.size):
        src, dst, draws = X[rows[r]], out[r], pairs[r * d:(r + 1) * d]
        for j in range(d):
            dst[j] = src[j] * (kept if _bits(draws, j) < limit else dropped)
    return left, next_


def _advance(kernel, *args) -> None:
    """Run ``kernel(mt, left, next, *args)`` on torch's generator state (its 624 words and torch's position
    bookkeeping), which then continues after the kernel's draws."""
    with _LOCK:
        raw = torch.get_rng_state()
        state = raw.numpy().view(_STATE)
        mt = state["words"][0].astype(np.uint32)
        left, next_ = int(state["left"][0]), int(state["next"][0])
        if not 1 <= left <= _N or next_ + left - 1 > _N:
            raise ValueError(f"torch's generator state has left={left}, next={next_}: not an MT19937 position")
        left, next_ = kernel(mt, left, next_, *args)
        state["words"][0], state["left"][0], state["next"][0] = mt, left, next_
        torch.set_rng_state(raw)  # the generator moves past the draws, as torch's kernels move it


def uniform(n: int) -> np.ndarray:
    """The stream's next ``n`` doubles: what ``torch.rand(n, dtype=torch.float64)`` draws (the masks' test)."""
    out = np.empty(n, dtype=np.float64)
    _advance(_doubles, out)
    return out


def _below(keep: float) -> np.uint64:
    """The 53-bit draws whose double is below ``keep`` are those below this (keep * 2**53 is exact)."""
    if not 0 <= keep <= 1:
        raise ValueError(f"keep={keep} is not a probability")
    return np.uint64(math.ceil(keep * 2.0**53))


def keep_mask(n: int, keep: float) -> np.ndarray:
    """``torch.empty(n).bernoulli_(keep)``: 1.0 where the next double is below ``keep``, else 0.0.

    ``dropped_rows``' own loop on one row of ones, so that ``matches_torch``, which checks this, checks the
    loop that training runs.
    """
    below, out = _below(keep), np.empty((1, n), dtype=np.float32)
    _advance(_drop_rows, np.ones((1, n), dtype=np.float32), np.zeros(1, dtype=np.int64), below, 1.0,
             np.empty(2 * n, dtype=np.uint32), out)
    return out[0]


def dropped_rows(X: np.ndarray, rows: np.ndarray, keep: float, scale: float, out: np.ndarray) -> np.ndarray:
    """``X[rows]`` times ``bernoulli_(keep)``'s mask times ``scale``, into ``out``: gathered, drawn and scaled in
    one compiled pass (``scale`` a float32 value: what torch's ``div_(keep)`` makes of a 1). Dropout draws only
    for 0 < keep < 1, so only those are taken."""
    below, rows = _below(keep), np.asarray(rows, dtype=np.int64)
    if not (0 < keep < 1 and rows.ndim == 1 and X.dtype == out.dtype == np.float32 and X.ndim == 2
            and X.flags.c_contiguous and out.flags.c_contiguous
            and out.shape == (len(rows), X.shape[1]) and float(np.float32(scale)) == scale
            and (len(rows) == 0 or 0 <= rows.min() <= rows.max() < len(X))):
        raise ValueError("dropped_rows takes 0 < keep < 1, C-ordered float32 rows, a 1-d index within them, an "
                         "output of (len(rows), columns) and a float32 scale")
    with _LOCK:
        if _WORDS[0].size < 2 * out.size:
            _WORDS[0] = np.empty(2 * out.size, dtype=np.uint32)
        _advance(_drop_rows, X, rows, below, scale, _WORDS[0][:2 * out.size], out)
    return out


def mismatch(draw=keep_mask) -> str | None:
    """Why ``draw`` does not draw ``bernoulli_``'s masks, or leave the generator as it does; None if it does.

    Compared over 1,500 elements (several twists) at two probabilities; the generator is left as it was.
    """
    with _LOCK:
        return _mismatch(draw)


def _mismatch(draw) -> str | None:
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
