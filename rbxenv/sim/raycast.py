"""Rays against the walls: the brute-force reference and the ray windows the simulator casts in.

Walls are two closed polylines (left and right edge). Wall segment ``i`` of either side joins wall
points ``i`` and ``i + 1`` and borders the road cell between cross-sections ``X_i`` and
``X_{i+1}`` (``X_i`` = the segment from left point i to right point i). A car only tests the wall
segments of a window of cells around its centre-line index (``kernels._cast_walls``);
``ray_windows`` computes windows that are provably large enough (see its docstring), so windowed
rays equal brute-force rays (``cast_segments``, which tests/test_sim.py compares them with).
"""

from __future__ import annotations

import numpy as np


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


def _point_segment_dist(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = b - a
    t = np.clip(np.einsum("...i,...i", p - a, d) / np.maximum(np.einsum("...i,...i", d, d), 1e-12), 0, 1)
    e = p - a - t[..., None] * d
    return np.hypot(e[..., 0], e[..., 1])


def _segment_dist(a0, a1, b0, b1) -> np.ndarray:
    """Minimum distance between segments a0-a1 and b0-b1 (0 when they cross)."""

    def orient(p, q, r):
        return np.sign(
            (q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1]) - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0])
        )

    cross = (orient(a0, a1, b0) * orient(a0, a1, b1) < 0) & (orient(b0, b1, a0) * orient(b0, b1, a1) < 0)
    d = np.minimum.reduce(
        [
            _point_segment_dist(a0, b0, b1),
            _point_segment_dist(a1, b0, b1),
            _point_segment_dist(b0, a0, a1),
            _point_segment_dist(b1, a0, a1),
        ]
    )
    return np.where(cross, 0.0, d)


def _reach(left: np.ndarray, right: np.ndarray, ray_length: float) -> np.ndarray:
    """reach[a]: the first j >= 1 such that no straight ray crossing X_a can reach X_{a+j}.

    A straight ray crosses a straight cross-section at most once, so inside the road it crosses
    X_a, X_{a+1}, ... in this order, and its crossing points lie in order on one line. For any
    chain a < b < ... < m its length from X_a to X_m is therefore at least
    dist(X_a, X_b) + ... + dist(X_., X_m). B[j] is the best such chain bound (dynamic
    programming over the last link); it grows with j and stops the reach once > ray_length.
    Chains make the bound tight around hairpins, where X_a and X_m are close in a straight line.
    """
    m = len(left)
    half = m // 2 + 1
    reach = np.full(m, half)
    open_ = np.ones(m, bool)
    dist = [np.zeros(m)]  # dist[j][a] = dist(X_a, X_{a+j})
    bound = [np.zeros(m)]  # bound[j][a] = chain bound from X_a to X_{a+j}
    for j in range(1, half):
        k = (np.arange(m) + j) % m
        dist.append(_segment_dist(left, right, left[k], right[k]))
        # last link from X_{a+b} to X_{a+j}: bound[b][a] + dist[j - b][a + b]
        b_j = np.max([bound[b] + np.roll(dist[j - b], -b) for b in range(j)], axis=0)
        bound.append(b_j)
        far = b_j > ray_length
        reach[open_ & far] = j
        open_ &= ~far
        if not open_.any():
            break
    return reach


def ray_windows(
    left: np.ndarray, right: np.ndarray, ray_length: float, cell_margin: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Per centre-line index h, the wall cells h - lo[h] .. h + hi[h] that rays can reach.

    Why it is exact: a ray starts inside the road and stays inside it until its first hit, so to
    hit the wall of a cell j cells away it must cross every cross-section in between, and
    ``_reach`` bounds how far that can go with a ray of ``ray_length``: a car in cell c reaches
    cells c - reach_backward(X_c) .. c + reach_forward(X_{c+1}). A car's projection segment is
    within ``cell_margin`` cells of the cell it is really in (cross-sections are tilted by half
    the turn angle at each point), which the margin covers. Where the window would cover the
    whole loop, it is the whole loop. tests/test_sim.py checks windowed rays against brute force.
    """
    lp = np.asarray(left, dtype=np.float64)
    rp = np.asarray(right, dtype=np.float64)
    m = len(lp)
    fwd = np.roll(_reach(lp, rp, ray_length), -1)  # cell c leaves forward through X_{c+1}
    back = _reach(lp[::-1], rp[::-1], ray_length)[::-1]  # ... and backward through X_c
    cells = range(-cell_margin, cell_margin + 1)
    lo = np.max([np.roll(back, -d) - d for d in cells], axis=0)
    hi = np.max([np.roll(fwd, -d) + d for d in cells], axis=0)
    whole = lo + hi + 1 >= m
    return np.where(whole, 0, lo), np.where(whole, m - 1, hi)
