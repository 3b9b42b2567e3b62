"""Merkle maths against RFC 6962: known test vectors, and an independent recursion of the RFC's
PATH and PROOF definitions for every tree size up to 70 and every index / size pair."""
from __future__ import annotations

import hashlib

import pytest

from medforensics.provenance.merkle import (EMPTY_ROOT, consistency_path, consistency_ranges, fold, inclusion_path,
                                            leaf_hash, node_hash, range_nodes, root_from_leaf_hashes,
                                            verify_consistency, verify_inclusion)

# The RFC 6962 reference test data (as used by certificate-transparency-go and Trillian).
DATA = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43", bytes(range(0x50, 0x58)),
        bytes(range(0x60, 0x70))]
ROOTS = ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
         "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
         "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
         "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
         "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
         "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
         "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
         "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"]


def _h(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def ref_mth(d: list[bytes]) -> bytes:
    """MTH straight from RFC 6962 2.1, over leaf *data*."""
    n = len(d)
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + d[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return _h(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) from RFC 6962 2.1.1."""
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) from RFC 6962 2.1.2."""
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def test_known_roots_and_proofs():
    leaves = [leaf_hash(x) for x in DATA]
    assert root_from_leaf_hashes([]) == EMPTY_ROOT == _h(b"")
    assert [root_from_leaf_hashes(leaves[:n]).hex() for n in range(1, 9)] == ROOTS
    assert [p.hex() for p in inclusion_path(5, 8, leaves)] == [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0", ROOTS[3]]
    assert [p.hex() for p in consistency_path(6, 8, leaves)] == [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0", ROOTS[3]]


def test_all_sizes_against_reference_recursion():
    data = [b"leaf %d" % i for i in range(70)]
    leaves = [leaf_hash(x) for x in data]
    roots = [ref_mth(data[:n]) for n in range(71)]
    for n in range(1, 71):
        assert root_from_leaf_hashes(leaves[:n]) == roots[n]
        for i in range(n):
            path = inclusion_path(i, n, leaves)
            assert path == ref_path(i, data[:n])
            assert verify_inclusion(leaves[i], i, n, path, roots[n])
        for m in range(1, n + 1):
            proof = consistency_path(m, n, leaves)
            assert proof == (ref_subproof(m, data[:n], True) if m < n else [])
            assert verify_consistency(m, n, roots[m], roots[n], proof)
            # every range of a proof is a fold of aligned complete subtrees
            for lo, hi in consistency_ranges(m, n):
                nodes = range_nodes(lo, hi)
                assert fold([root_from_leaf_hashes(leaves[ix << lv:(ix + 1) << lv]) for lv, ix in nodes]) \
                    == root_from_leaf_hashes(leaves[lo:hi])


def _flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


def test_tampered_inclusion_proofs_rejected():
    leaves = [leaf_hash(b"%d" % i) for i in range(37)]
    for n in (2, 5, 8, 13, 37):
        root = root_from_leaf_hashes(leaves[:n])
        for i in range(n):
            path = inclusion_path(i, n, leaves)
            for j in range(len(path)):
                bad = list(path)
                bad[j] = _flip(bad[j])
                assert not verify_inclusion(leaves[i], i, n, bad, root)
            assert not verify_inclusion(_flip(leaves[i]), i, n, path, root)
            assert not verify_inclusion(leaves[i], i, n, path, _flip(root))
            assert not verify_inclusion(leaves[i], i, n, path[:-1], root)
            assert not verify_inclusion(leaves[i], i, n, path + [root], root)
            assert not verify_inclusion(leaves[i], n, n, path, root)
            if n > 1:
                assert not verify_inclusion(leaves[i], (i + 1) % n, n, path, root)
    assert not verify_inclusion(b"short", 0, 1, [], b"short")
    assert not verify_inclusion(leaves[0], -1, 1, [], leaves[0])
    assert not verify_inclusion(leaves[0], "x", 1, [], leaves[0])  # type: ignore[arg-type]


def test_tampered_consistency_proofs_rejected():
    leaves = [leaf_hash(b"%d" % i) for i in range(40)]
    roots = [root_from_leaf_hashes(leaves[:n]) for n in range(41)]
    for n in (3, 8, 21, 40):
        for m in range(1, n):
            proof = consistency_path(m, n, leaves)
            assert verify_consistency(m, n, roots[m], roots[n], proof)
            for j in range(len(proof)):
                bad = list(proof)
                bad[j] = _flip(bad[j])
                assert not verify_consistency(m, n, roots[m], roots[n], bad)
            assert not verify_consistency(m, n, _flip(roots[m]), roots[n], proof)
            assert not verify_consistency(m, n, roots[m], _flip(roots[n]), proof)
            assert not verify_consistency(m, n, roots[m], roots[n], proof[:-1])
            assert not verify_consistency(m, n, roots[m], roots[n], proof + [roots[n]])
            assert not verify_consistency(n, m, roots[n], roots[m], proof)
    assert verify_consistency(5, 5, roots[5], roots[5], [])
    assert not verify_consistency(5, 5, roots[5], roots[6], [])
    assert not verify_consistency(3, 8, roots[3], roots[8], [])


def test_helpers():
    assert node_hash(b"a", b"b") == _h(b"\x01ab")
    assert range_nodes(8, 13) == [(2, 2), (0, 12)]
    with pytest.raises(ValueError):
        range_nodes(3, 7)
    with pytest.raises(ValueError):
        consistency_ranges(5, 3)
