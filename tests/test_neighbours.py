import numpy as np
import pytest

from pipeline.data.grouping import THUMBNAIL, Hashes, near_duplicate_pairs
from pipeline.data.neighbours import pairs_within


def all_pairs(hashes: Hashes, max_bits: int) -> np.ndarray:
    """The search as it was: every informative pair compared, plain against plain and mirrored."""
    keep = np.flatnonzero(hashes.informative)
    plain, mirrored = hashes.plain[keep], hashes.mirrored[keep]
    dist = np.minimum(np.bitwise_count(plain[:, None] ^ plain[None, :]),
                      np.bitwise_count(plain[:, None] ^ mirrored[None, :]))
    i, j = np.nonzero(dist <= max_bits)
    below = i < j
    return np.stack([keep[i[below]], keep[j[below]]], axis=1)


def flip(rng: np.random.Generator, value: np.uint64, bits: int) -> np.uint64:
    return value ^ np.uint64(sum(1 << int(b) for b in rng.choice(64, size=bits, replace=False)))


def planted_hashes(n: int, seed: int) -> Hashes:
    """Random hashes, with copies planted at 0..16 bits from others, by plain and by mirrored hash.

    Bits are flipped in runs of one block as well as spread out, so pairs close in one
    block and far in the others, and pairs found from several blocks, both occur.
    """
    rng = np.random.default_rng(seed)
    plain = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    mirrored = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    for target in rng.choice(n, size=n // 3, replace=False):
        source = rng.integers(n)
        bits = int(rng.integers(0, 17))
        kind = rng.integers(4)
        if kind == 0:
            plain[target] = flip(rng, plain[source], bits)
        elif kind == 1:  # a mirrored copy: its mirrored hash is near the other's plain hash
            mirrored[target] = flip(rng, plain[source], bits)
        elif kind == 2:  # the other way round, which the search (plain of i against mirror of j, i < j) treats apart
            plain[target] = flip(rng, mirrored[source], bits)
        else:  # all flipped bits inside one 16-bit block
            block = int(rng.integers(4)) * 16
            mask = sum(1 << (block + int(b)) for b in rng.choice(16, size=min(bits, 16), replace=False))
            plain[target] = plain[source] ^ np.uint64(mask)
    plain[:5] = plain[5]  # exact copies
    informative = rng.random(n) > 0.05
    return Hashes(plain=plain, mirrored=mirrored, informative=informative,
                  thumbnails=np.zeros((n, THUMBNAIL * THUMBNAIL), dtype=np.uint8))  # the search reads none


@pytest.mark.parametrize("max_bits", [0, 1, 3, 7, 10, 12, 15, 20])
def test_the_indexed_search_returns_exactly_the_all_pairs_result(max_bits):
    hashes = planted_hashes(2500, seed=max_bits)
    expected = all_pairs(hashes, max_bits)
    assert len(expected) > 50  # the planted pairs are there to be found
    found = near_duplicate_pairs(hashes, max_bits, threads=2)
    assert found.dtype == np.int64
    np.testing.assert_array_equal(found, expected)


@pytest.mark.parametrize("method", ["index", "scan"])
@pytest.mark.parametrize("max_bits", [2, 10, 14])
def test_each_method_matches_brute_force_on_one_and_two_arrays(method, max_bits):
    hashes = planted_hashes(1500, seed=100 + max_bits)
    for base in (hashes.plain, hashes.mirrored):
        dist = np.bitwise_count(hashes.plain[:, None] ^ base[None, :])
        i, j = np.nonzero(np.triu(dist <= max_bits, k=1))
        expected = np.stack([i, j], axis=1)
        for threads in (1, 3):
            found = pairs_within(hashes.plain, base, max_bits, threads=threads, method=method)
            np.testing.assert_array_equal(found, expected)


def test_no_informative_hashes_or_too_few_give_no_pairs():
    zeros = np.zeros(4, dtype=np.uint64)
    grey = np.zeros((4, THUMBNAIL * THUMBNAIL), dtype=np.uint8)
    assert near_duplicate_pairs(Hashes(zeros, zeros, np.zeros(4, dtype=bool), grey), 10).shape == (0, 2)
    one = Hashes(zeros[:1], zeros[:1], np.ones(1, dtype=bool), grey[:1])
    assert near_duplicate_pairs(one, 10).shape == (0, 2)
    np.testing.assert_array_equal(near_duplicate_pairs(Hashes(zeros, zeros, np.ones(4, dtype=bool), grey), 0),
                                  [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])
