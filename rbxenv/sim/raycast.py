"""Rays against the walls: the brute-force reference and the ray windows the simulator casts in.

Walls are two closed polylines (left and right edge). Wall segment ``i`` of either side joins wall
points ``i`` and ``i + 1`` and borders the road cell between cross-sections ``X_i`` and
``X_{i+1}`` (``X_i`` = the segment from left point i to right point i). A car only tests the wall
segments of a window of cells around its centre-line index (``kernels._cast_walls``);
``ray_windows`` computes windows that are provably large enough (see its docstring), so windowed
rays equal brute-force rays (``cast_segments``, which tests/test_sim.py compares them with).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import types


def wall_table(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Wall segments per cell, shape (M, 2, 4): [cell, side (left, right), (ax, ay, ex, ey)]."""
    out = np.empty((len(left), 2, 4))
    for side, w in enumerate((left, right)):
        w = np.asarray(w, dtype=np.float64)
        out[:, side, :2] = w
        out[:, side, 2:] = np.roll(w, -1, axis=0) - w
    return out


def cast_segments(origin: np.ndarray, dirs: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Distance along each ray to the first segment hit (inf when none).

    origin (n, 2), dirs (n, R, 2) unit vectors, seg (n, S, 4) rows (ax, ay, ex, ey).
    Solve origin + t * r = a + u * e with q = a - origin:
    t = (q × e) / (r × e), u = (q × r) / (r × e); a hit needs t >= 0 and 0 <= u <= 1.
    The (n, R, S) part runs in float32 on coordinates relative to the car (errors ~1e-5 studs),
    like the simulator's windowed rays, which tests/test_sim.py checks against this brute force.
    """
    f32 = np.float32
    qx = (seg[:, :, 0] - origin[:, 0, None]).astype(f32)[:, None, :]  # (n, 1, S)
    qy = (seg[:, :, 1] - origin[:, 1, None]).astype(f32)[:, None, :]
    ex = seg[:, None, :, 2].astype(f32)
    ey = seg[:, None, :, 3].astype(f32)
    rx = dirs[:, :, 0, None].astype(f32)  # (n, R, 1)
    ry = dirs[:, :, 1, None].astype(f32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / (rx * ey - ry * ex)  # parallel -> inf, and then t/u are inf or nan: no hit
        t = (qx * ey - qy * ex) * inv
        u = (qx * ry - qy * rx) * inv
        hit = (t >= 0.0) & (u >= 0.0) & (u <= 1.0)
    return np.where(hit, t, np.inf).min(axis=2).astype(np.float64)


# --------------------------------------------------------------------------- ray windows (compiled)
# Building a track's windows is a dynamic programme over pairs of nearby cross-sections: a few
# hundred thousand scalar steps, compiled with numba like ``kernels`` (explicit signatures, so
# importing compiles them or loads them from numba's cache and no spawn waits for a compiler).

_jit = numba.njit(error_model="numpy")


@_jit
def _sign(v: float) -> float:
    return 1.0 if v > 0.0 else -1.0 if v < 0.0 else 0.0


@_jit
def _orient(px: float, py: float, qx: float, qy: float, rx: float, ry: float) -> float:
    """Sign of the turn p -> q -> r: 1 left, -1 right, 0 collinear."""
    return _sign((qx - px) * (ry - py) - (qy - py) * (rx - px))


@_jit
def _offset(px: float, py: float, ax: float, ay: float, bx: float, by: float) -> tuple[float, float]:
    """Vector to point p from the nearest point of segment a-b."""
    dx, dy = bx - ax, by - ay
    qx, qy = px - ax, py - ay
    along, length2 = qx * dx + qy * dy, max(dx * dx + dy * dy, 1e-12)
    if along <= 0.0:  # nearest to a or b: the clamped fraction needs no division
        return qx, qy
    if along >= length2:
        return qx - dx, qy - dy
    t = along / length2  # in (0, 1): the ends were handled above
    return qx - t * dx, qy - t * dy


@_jit
def _shortest(offsets) -> float:
    """min(math.hypot(x, y) for x, y in offsets), with hypot (most of the cost) taken only where
    x² + y² is within 1e-9 of the least: hypot is exact to an ulp, so no other can be the least."""
    least = np.inf
    for x, y in offsets:
        least = min(least, x * x + y * y)
    best = np.inf
    for x, y in offsets:
        if x * x + y * y <= least * (1.0 + 1e-9) + 1e-300:  # + 1e-300: squares rounded as subnormals
            best = min(best, math.hypot(x, y))
    return best


@_jit
def _section_dist(left: np.ndarray, right: np.ndarray, a: int, b: int) -> float:
    """Minimum distance between cross-sections X_a and X_b (0 when they cross); symmetric in a, b."""
    a0x, a0y, a1x, a1y = left[a, 0], left[a, 1], right[a, 0], right[a, 1]
    b0x, b0y, b1x, b1y = left[b, 0], left[b, 1], right[b, 0], right[b, 1]
    if (
        _orient(a0x, a0y, a1x, a1y, b0x, b0y) * _orient(a0x, a0y, a1x, a1y, b1x, b1y) < 0.0
        and _orient(b0x, b0y, b1x, b1y, a0x, a0y) * _orient(b0x, b0y, b1x, b1y, a1x, a1y) < 0.0
    ):
        return 0.0
    return _shortest(
        (
            _offset(a0x, a0y, b0x, b0y, b1x, b1y),  # each end of one section to the other section
            _offset(a1x, a1y, b0x, b0y, b1x, b1y),
            _offset(b0x, b0y, a0x, a0y, a1x, a1y),
            _offset(b1x, b1y, a0x, a0y, a1x, a1y),
        )
    )


@_jit
def _add_column(left: np.ndarray, right: np.ndarray, table: np.ndarray, k: int) -> None:
    """table[k, c] = dist(X_c, X_{c+k}) for every c (indices mod m), repeated past m so that
    c + b needs no modulo."""
    m = len(left)
    for c in range(m):
        table[k, c] = _section_dist(left, right, c, (c + k) % m)
    table[k, m:] = table[k, : table.shape[1] - m]


@numba.njit(types.UniTuple(types.int64[::1], 2)(types.float64[:, ::1], types.float64[:, ::1], types.float64),
            cache=True, error_model="numpy")  # fmt: skip
def _reaches(left, right, ray_length):
    """(forward, backward) reaches: forward[a] is the first j >= 1 such that no straight ray crossing
    X_a can reach X_{a+j}, backward[a] the first j such that none can reach X_{a-j}.

    A straight ray crosses a straight cross-section at most once, so inside the road it crosses
    X_a, X_{a+1}, ... in this order, and its crossing points lie in order on one line. For any
    chain a < b < ... < z its length from X_a to X_z is therefore at least
    dist(X_a, X_b) + ... + dist(X_., X_z). bound[j] is the best such chain bound from X_a to
    X_{a+j} (dynamic programming over the last link: bound[j] = max over b < j of
    bound[b] + dist(X_{a+b}, X_{a+j})); it grows with j, and the reach is the first j where it
    exceeds ray_length, or m // 2 + 1 if none below that does. Chains make the bound tight around
    hairpins, where X_a and X_z are close in a straight line. Backward is the same on the
    reversed loop. Both directions read one table of distances (the distance is symmetric),
    filled one k = j - b at a time as far as the longest reach needs.
    """
    m = len(left)
    half = m // 2 + 1
    table = np.empty((half, m + half))  # table[k, c] = dist(X_c, X_{c+k}); rows 1 .. filled are set
    filled = 0
    bound = np.empty(half)
    forward, backward = np.full(m, half), np.full(m, half)
    for a in range(m):
        for reach, step in ((forward, 1), (backward, 0)):
            bound[0] = 0.0
            for j in range(1, half):
                if filled < j:
                    filled = j
                    _add_column(left, right, table, j)
                # last link X_{a+b} -> X_{a+j}: table[j - b, a + b]; backward X_{a-b} -> X_{a-j},
                # the same distance as X_{a-j} -> X_{a-j + (j-b)}: table[j - b, (a - j) mod m]
                first = a if step else (a - j) % m
                best = -np.inf
                for b in range(j):
                    best = max(best, bound[b] + table[j - b, first + step * b])
                bound[j] = best
                if best > ray_length:
                    reach[a] = j
                    break
    return forward, backward


def ray_windows(
    left: np.ndarray, right: np.ndarray, ray_length: float, cell_margin: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Per centre-line index h, the wall cells h - lo[h] .. h + hi[h] that rays can reach.

    Why it is exact: a ray starts inside the road and stays inside it until its first hit, so to
    hit the wall of a cell j cells away it must cross every cross-section in between, and
    ``_reaches`` bounds how far that can go with a ray of ``ray_length``: a car in cell c reaches
    cells c - reach_backward(X_c) .. c + reach_forward(X_{c+1}). A car's projection segment is
    within ``cell_margin`` cells of the cell it is really in (cross-sections are tilted by half
    the turn angle at each point), which the margin covers. Where the window would cover the
    whole loop, it is the whole loop. tests/test_sim.py checks windowed rays against brute force.
    """
    lp = np.ascontiguousarray(left, dtype=np.float64)
    rp = np.ascontiguousarray(right, dtype=np.float64)
    m = len(lp)
    forward, back = _reaches(lp, rp, float(ray_length))
    c = np.arange(m)
    fwd = forward[(c + 1) % m]  # cell c leaves forward through X_{c+1}, and backward through X_c
    d = np.arange(-cell_margin, cell_margin + 1)[:, None]  # the cells around, one row each
    around = (c + d) % m
    lo = np.max(back[around] - d, axis=0)
    hi = np.max(fwd[around] + d, axis=0)
    whole = lo + hi + 1 >= m
    return np.where(whole, 0, lo), np.where(whole, m - 1, hi)
