"""Merkle tree maths of RFC 6962 / RFC 9162 (section 2.1): hashes, proofs and their verification.

Pure functions, no storage. A tree of ``n`` leaves ``D[0:n]`` has the hash

* ``MTH({}) = SHA-256()``, ``MTH({d}) = SHA-256(0x00 || d)``;
* ``MTH(D[0:n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))`` with ``k`` the largest power of
  two smaller than ``n``.

Storage keeps the hashes of *complete* subtrees, addressed ``(level, index)``: the subtree of
``2**level`` leaves starting at leaf ``index * 2**level``. Any range a proof needs is the right
fold of at most ``log2 n`` such subtrees (:func:`range_nodes`, :func:`fold`), so proofs cost
``O(log n)`` reads.

>>> leaves = [leaf_hash(bytes([i])) for i in range(5)]
>>> root = root_from_leaf_hashes(leaves)
>>> proof = inclusion_path(2, 5, leaves)
>>> verify_inclusion(leaves[2], 2, 5, proof, root)
True
"""
from __future__ import annotations

import hashlib
from typing import Callable, Sequence

__all__ = ["leaf_hash", "node_hash", "EMPTY_ROOT", "largest_power_of_two_below", "root_from_leaf_hashes",
           "inclusion_ranges", "consistency_ranges", "range_nodes", "fold", "inclusion_path",
           "consistency_path", "verify_inclusion", "verify_consistency", "root_from_inclusion"]

#: ``MTH`` of the empty tree: the SHA-256 of the empty string.
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def largest_power_of_two_below(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (``n >= 2``)."""
    if n < 2:
        raise ValueError("n must be at least 2")
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """``MTH`` of a list of leaf hashes, by the recursive definition (a reference, ``O(n)``)."""
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return hashes[0]
    k = largest_power_of_two_below(n)
    return node_hash(root_from_leaf_hashes(hashes[:k]), root_from_leaf_hashes(hashes[k:]))


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges ``[start, end)`` whose hashes form the audit path ``PATH(index, D[0:size])``
    (RFC 6962 2.1.1), nearest the leaf first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    out: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = largest_power_of_two_below(hi - lo)
        if index < lo + k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo = lo + k
    return out[::-1]


def consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """The leaf ranges whose hashes form ``PROOF(first, D[0:second])`` (RFC 6962 2.1.2), in
    proof order. Empty when ``first == second`` or ``first == 0``."""
    if not 0 <= first <= second:
        raise ValueError(f"no consistency proof from size {first} to size {second}")
    if first == 0 or first == second:
        return []
    out: list[tuple[int, int]] = []

    def subproof(m: int, lo: int, hi: int, whole: bool) -> None:
        n = hi - lo
        if m == n:
            if not whole:
                out.append((lo, hi))
            return
        k = largest_power_of_two_below(n)
        if m <= k:
            subproof(m, lo, lo + k, whole)
            out.append((lo + k, hi))
        else:
            subproof(m - k, lo + k, hi, False)
            out.append((lo, lo + k))

    subproof(first, 0, second, True)
    return out


def range_nodes(start: int, end: int) -> list[tuple[int, int]]:
    """The complete subtrees ``(level, index)`` that make up the range ``[start, end)``, left to
    right. ``start`` must be a multiple of the largest power of two not above ``end - start``
    (true of every range in a proof)."""
    out: list[tuple[int, int]] = []
    lo = start
    while lo < end:
        size = end - lo
        level = size.bit_length() - 1
        if lo % (1 << level):
            raise ValueError(f"range [{start}, {end}) is not aligned")
        out.append((level, lo >> level))
        lo += 1 << level
    return out


def fold(hashes: Sequence[bytes]) -> bytes:
    """The hash of a range from the hashes of its complete subtrees (left to right, sizes
    decreasing): a right fold with :func:`node_hash`."""
    if not hashes:
        return EMPTY_ROOT
    h = hashes[-1]
    for left in reversed(hashes[:-1]):
        h = node_hash(left, h)
    return h


def _range_hash_from_leaves(leaves: Sequence[bytes]) -> Callable[[int, int], bytes]:
    return lambda lo, hi: root_from_leaf_hashes(leaves[lo:hi])


def inclusion_path(index: int, size: int, leaves: Sequence[bytes]) -> list[bytes]:
    """Audit path of leaf ``index`` in the tree of the first ``size`` leaf hashes (in memory)."""
    h = _range_hash_from_leaves(leaves)
    return [h(lo, hi) for lo, hi in inclusion_ranges(index, size)]


def consistency_path(first: int, second: int, leaves: Sequence[bytes]) -> list[bytes]:
    """Consistency proof between the trees of the first ``first`` and ``second`` leaf hashes."""
    h = _range_hash_from_leaves(leaves)
    return [h(lo, hi) for lo, hi in consistency_ranges(first, second)]


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes | None:
    """The root implied by an audit path (RFC 9162 2.1.3.2), or None if the path has the wrong
    length for ``(index, size)``."""
    if not 0 <= index < size:
        return None
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Whether ``proof`` shows that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size``
    leaves with hash ``root`` (RFC 9162 2.1.3.2). Never raises on malformed input."""
    try:
        if not all(isinstance(x, (bytes, bytearray)) and len(x) == 32 for x in (leaf_hash, root, *proof)):
            return False
        got = root_from_inclusion(bytes(leaf_hash), int(index), int(tree_size), [bytes(p) for p in proof])
    except (TypeError, ValueError):
        return False
    return got is not None and got == bytes(root)


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]) -> bool:
    """Whether ``proof`` shows that the tree of ``size1`` leaves with hash ``root1`` is a prefix of
    the tree of ``size2`` leaves with hash ``root2`` (RFC 9162 2.1.4.2). Never raises."""
    try:
        if not all(isinstance(x, (bytes, bytearray)) and len(x) == 32 for x in (root1, root2, *proof)):
            return False
        size1, size2 = int(size1), int(size2)
        proof = [bytes(p) for p in proof]
        root1, root2 = bytes(root1), bytes(root2)
    except (TypeError, ValueError):
        return False
    if size1 < 0 or size2 < size1:
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if size1 == 0:
        return not proof  # the empty tree is a prefix of every tree
    if not proof:
        return False
    if size1 & (size1 - 1) == 0:  # a power of two: root1 is the first node of the path
        proof = [root1, *proof]
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == root1 and sr == root2
