"""The loops of ``rbxenv.tracks`` that numpy could not make fast, compiled with numba.

Why: ``tracks.generate`` runs in the trainer at every track change, and most of its time went
to ``validate``'s pair searches (an O(m^2) distance matrix for the road clearance, a spatial hash
of numpy calls for wall crossings) and to the grid method's growth of a polyomino (a flood fill in
Python per added cell). Here each is a plain loop over the points, segments or lattice cells, with
the same formulas as the numpy code it replaced, so every track and every message of ``validate``
stays the same (tests/test_tracks.py checks the recorded ones, tests/vectors/track_specs.json).
One exception: the clearance distances are now computed directly, not from a matrix product
(|p|² + |q|² - 2 p·q, whose rounding depended on the BLAS build), so where several pairs of
points are too close by the same amount (to ~1e-13), ``validate`` names the first of them.

Like ``rbxenv.sim.kernels``: explicit signatures and numba's on-disk cache, so importing this
module compiles the kernels once or loads them, and no call ever waits for a compiler; no
fastmath. Everything else in ``tracks`` stays numpy, where it is already fast.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import types

_F8, _I8, _B1 = types.float64, types.int64, types.boolean


def _kernel(signature):
    return numba.njit(signature, cache=True, error_model="numpy")


# --------------------------------------------------------------------------- road clearance


@_kernel(types.Tuple([_I8, _I8, _F8, _F8])(_F8[:, ::1], _F8[::1], _F8[::1], _F8, _F8, _F8))
def worst_clearance(p, hw, s, length, min_along, gap):
    """The pair of centre-line points i < j farther apart than ``min_along`` along the loop (of
    ``length``; ``s`` = arc length of each point) but closer on the ground than
    ``hw[i] + hw[j] + gap``, whose distance falls shortest of that; (i, j, distance, needed), or
    i = j = -1 when no pair is too close. Ties go to the first pair in (i, j) order.

    Most pairs are far apart: point j + k is at least d - k * step from point i when point j is
    d away (step = the longest segment), so the j that cannot come within the largest ``need``
    are skipped, which leaves every pair that can count, in the same order."""
    n = len(p)
    step = 0.0
    for i in range(n):
        dx, dy = p[(i + 1) % n, 0] - p[i, 0], p[(i + 1) % n, 1] - p[i, 1]
        step = max(step, math.sqrt(dx * dx + dy * dy))
    step = max(step, 1e-9) * (1.0 + 1e-9)  # rounded up, as reach below: skip only what is surely out
    reach = 2.0 * hw.max() + gap + 1e-6  # no pair needs more
    best, bi, bj, bd, bn = np.inf, -1, -1, 0.0, 0.0
    for i in range(n):
        j = i + 1
        while j < n:
            along = abs(s[i] - s[j])
            if not min(along, length - along) > min_along:
                j += 1
                continue
            need = hw[i] + hw[j] + gap
            dx, dy = p[i, 0] - p[j, 0], p[i, 1] - p[j, 1]
            d = math.sqrt(dx * dx + dy * dy)
            if d < need and d - need < best:
                best, bi, bj, bd, bn = d - need, i, j, d, need
            ahead = (d * (1.0 - 1e-9) - reach) / step  # j + 1 .. j + ahead - 1 are farther than reach
            j += int(ahead) if 1.0 <= ahead < n else 1  # (not when d overflowed to inf: ahead is inf or nan)
    return bi, bj, bd, bn


# --------------------------------------------------------------------------- nearest segments


@_kernel(types.Tuple([_I8[::1], _F8[::1], _F8[::1]])(_F8[:, ::1], _F8[:, ::1]))
def nearest_segments(q, p):
    """(k, f, dist): for each point q[r], the segment p[k] -> p[k + 1] of the closed polyline p
    nearest to it (the first one on ties), the fraction f along it of the nearest point and the
    distance to that point."""
    n = len(p)
    k, f, dist = np.zeros(len(q), np.int64), np.zeros(len(q)), np.full(len(q), np.inf)
    dist2 = np.full(len(q), np.inf)  # dist ** 2 as summed: only a smaller one can give a smaller sqrt
    for i in range(n):
        dx, dy = p[(i + 1) % n, 0] - p[i, 0], p[(i + 1) % n, 1] - p[i, 1]
        seg2 = max(dx * dx + dy * dy, 1e-12)
        base = p[i, 0] * dx + p[i, 1] * dy
        for r in range(len(q)):
            t = min(max((q[r, 0] * dx + q[r, 1] * dy) - base, 0.0), seg2) / seg2
            ex, ey = q[r, 0] - (p[i, 0] + t * dx), q[r, 1] - (p[i, 1] + t * dy)
            e2 = ex * ex + ey * ey
            if e2 < dist2[r]:
                e = math.sqrt(e2)
                if e < dist[r]:
                    k[r], f[r], dist[r], dist2[r] = i, t, e, e2
    return k, f, dist


# --------------------------------------------------------------------------- segment crossings


@numba.njit(error_model="numpy")
def _orient(px, py, qx, qy, rx, ry):
    """Sign of the turn p -> q -> r: 1 left, -1 right, 0 collinear (np.sign of the cross product)."""
    v = (qx - px) * (ry - py) - (qy - py) * (rx - px)
    return 1.0 if v > 0.0 else -1.0 if v < 0.0 else 0.0


@numba.njit(error_model="numpy")
def _touch(a, b, i, j):
    """Segments a[i]->b[i] and a[j]->b[j] touch or cross; collinear overlaps do not count."""
    o1 = _orient(a[i, 0], a[i, 1], b[i, 0], b[i, 1], a[j, 0], a[j, 1])
    o2 = _orient(a[i, 0], a[i, 1], b[i, 0], b[i, 1], b[j, 0], b[j, 1])
    o3 = _orient(a[j, 0], a[j, 1], b[j, 0], b[j, 1], a[i, 0], a[i, 1])
    o4 = _orient(a[j, 0], a[j, 1], b[j, 0], b[j, 1], b[i, 0], b[i, 1])
    return o1 * o2 <= 0.0 and o3 * o4 <= 0.0 and not (o1 == 0.0 and o2 == 0.0)


@_kernel(_I8[:, ::1](_F8[:, ::1], _F8[:, ::1], _I8[:, ::1], _I8[:, ::1], _I8[::1]))
def touching_pairs(a, b, lo, hi, order):
    """Pairs (i, j), i < j, of segments a[k]->b[k] that touch or cross, among the pairs whose
    ranges of lattice cells overlap: segment k covers cells lo[k] .. hi[k] (x, y), and ``order``
    sorts the segments by lo[:, 0], so a sweep in that order meets each segment's neighbours in
    x right after it. Unordered; with cells as large as the longest segment, O(n) pairs are tried.
    """
    n = len(a)
    found = []
    for u in range(n):
        i = order[u]
        for v in range(u + 1, n):
            j = order[v]
            if lo[j, 0] > hi[i, 0]:
                break  # this and every later segment starts in a column right of segment i's
            if lo[j, 1] > hi[i, 1] or lo[i, 1] > hi[j, 1]:
                continue
            first, second = min(i, j), max(i, j)
            if _touch(a, b, first, second):
                found.append(first * n + second)
    out = np.empty((len(found), 2), np.int64)
    for r in range(len(found)):
        out[r, 0], out[r, 1] = divmod(found[r], n)
    return out


# --------------------------------------------------------------------------- polyomino growth
# A polyomino is a boolean lattice ``cells[x + 1, y + 1]`` with a border of empty cells around it.


@_kernel(_I8(_B1[:, ::1]))
def perimeter(cells):
    """Number of cell sides of the polyomino that face an empty cell."""
    out = 0
    for x in range(1, cells.shape[0] - 1):
        for y in range(1, cells.shape[1] - 1):
            if cells[x, y]:
                out += (not cells[x + 1, y]) + (not cells[x - 1, y]) + (not cells[x, y + 1]) + (not cells[x, y - 1])
    return out


@_kernel(_I8[::1](_B1[:, ::1]))
def frontier(cells):
    """The empty cells inside the border that share a side with the polyomino, as x * h + y
    (h = rows inside the border): in increasing (x, y) order."""
    h = cells.shape[1] - 2
    out = []
    for x in range(1, cells.shape[0] - 1):
        for y in range(1, h + 1):
            if not cells[x, y] and (cells[x + 1, y] or cells[x - 1, y] or cells[x, y + 1] or cells[x, y - 1]):
                out.append((x - 1) * h + y - 1)
    return np.array(out, np.int64)


@_kernel(_B1(_B1[:, ::1], _I8, _I8))
def grows_cleanly(cells, x, y):
    """Adding cell (x, y) (inside the border, empty) keeps the boundary one simple loop: no 2x2
    diagonal pinch and no enclosed hole (every empty cell is still reached from the border)."""
    cx, cy = x + 1, y + 1
    cells[cx, cy] = True
    clean = True
    for bx in (cx - 1, cx):
        for by in (cy - 1, cy):
            a, b, d, e = cells[bx, by], cells[bx + 1, by + 1], cells[bx + 1, by], cells[bx, by + 1]
            if (a and b and not d and not e) or (d and e and not a and not b):
                clean = False
    if clean:
        seen = cells.copy()  # flood the empty cells from the corner of the border
        seen[0, 0] = True
        stack = [(0, 0)]
        while stack:
            px, py = stack.pop()
            for qx, qy in ((px + 1, py), (px - 1, py), (px, py + 1), (px, py - 1)):
                if 0 <= qx < cells.shape[0] and 0 <= qy < cells.shape[1] and not seen[qx, qy]:
                    seen[qx, qy] = True
                    stack.append((qx, qy))
        clean = bool(seen.all())
    cells[cx, cy] = False
    return clean
