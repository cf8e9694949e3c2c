"""Seeded procedural race tracks as plain JSON data.

A **track spec** (PROTOCOL.md §3.4) is a dict that survives ``json.dumps`` unchanged::

    {"version": 1, "name": "hull-3", "method": "hull", "seed": 3,
     "centerline": [[x, y], ...],   # closed loop, first point not repeated, ~4 studs apart
     "half_width": [w, ...],        # centre line -> each wall, one per point
     "grid": [[x, y, heading], ...],  # start slots behind the start line (car i on slot i)
     "length": 1834.217}            # centre-line length of the closed loop

The track direction is the order of the points; the start line is at point 0 and the grid
lies just behind it, in two staggered columns. Headings are radians in the (x, y) plane
(0 = +x, counter-clockwise). Roblox maps a spec point ``(x, y)`` to ``Vector3.new(x, h, -y)``,
so a top-down view in Studio matches the pictures drawn here (``--png``).

Three generation methods (``METHODS``):

- ``"polar"``: random radii at jittered, sorted angles around a centre, smoothed by a periodic
  cubic B-spline: round-ish loops with sweeping bends.
- ``"hull"``: convex hull of random points, edges split with their midpoints pushed out or in
  (midpoint displacement), then B-spline smoothing: long straights, hairpins and bays.
- ``"grid"``: a closed walk of road tiles on a square lattice (the boundary of a random
  polyomino without holes or pinches), straights plus 90-degree corners rounded to arcs of
  radius ``GRID_CELL / 2``, exactly how Roblox road templates line up.

``generate(seed, method)`` is deterministic: it uses ``numpy.random.default_rng`` only and
rounds every number to 3 decimals, so one seed gives byte-identical JSON everywhere. An
invalid candidate (see ``validate``) is redrawn from a derived sub-seed.

Geometry helpers for the simulator (all vectorised numpy): ``centerline_array``, ``tangents``,
``walls`` (``offset_walls`` on arrays) and ``cumulative_length``. The few loops numpy cannot make
fast (``validate``'s pair searches, the grid method's polyomino growth) are compiled with numba in
``rbxenv.track_kernels``.

CLI: ``python -m rbxenv.tracks --seed 3 --method hull -o track.json --png track.png``.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from rbxenv import track_kernels

__all__ = [
    "METHODS",
    "ALL_METHODS",
    "MIN_CORNER_RADIUS",
    "MIN_LENGTH",
    "MAX_LENGTH",
    "generate",
    "from_centerline",
    "from_waypoints",
    "validate",
    "centerline_array",
    "tangents",
    "walls",
    "offset_walls",
    "cumulative_length",
    "difficulty_at",
    "save",
    "load",
    "load_track",
    "load_tracks",
    "track_files",
    "draw",
]

METHODS = ("polar", "hull", "grid")
ALL_METHODS = (*METHODS, "circuit")  # with a difficulty (generate)
VERSION = 1

SPACING = 4.0  # studs between centre-line points
CAR_RADIUS = 2.5  # PROTOCOL.md §4
# The car's tightest turn at low speed (kinematic bicycle: wheelbase / tan(max_steer), §4): 14.6.
MIN_TURN_RADIUS = 8.0 / math.tan(0.5)

# What ``validate`` accepts: the tracks people build in Roblox, from a 300-stud kart loop to a
# 20,000-stud (4 mile) circuit. A lap of 20,000 studs at racing speed takes about 6 minutes.
MIN_LENGTH, MAX_LENGTH = 300.0, 20000.0
# A car needs its radius plus 3 studs of room either side of the centre line; beyond 50 studs to
# a wall the rays (100 studs) would no longer see both walls of a straight.
MIN_HALF_WIDTH, MAX_HALF_WIDTH = CAR_RADIUS + 3.0, 50.0
MIN_CORNER_RADIUS = 15.0  # centre-line radius at every point: the car can follow it, just
INNER_MARGIN = 2.0  # corner radius - half width: the inner wall stays a curve, not a fold
# Three points 4 studs apart on an arc resampled from chords read its radius up to ~0.05 short.
RADIUS_TOLERANCE = 0.1
# Walls of two different stretches of road keep this much room (Roblox walls have thickness).
MIN_WALL_GAP = 4.0

# The classic generators (``generate`` without a difficulty) keep the box they always had, so a
# seed gives the same track as before (tests/vectors/track_specs.json pins them).
GEN_LENGTH, GEN_HALF_WIDTH, GEN_CORNER_RADIUS = (1000.0, 2500.0), (12.0, 16.0), 24.0
SLOT_MARGIN = CAR_RADIUS + 1.0  # a grid slot is at least this far from either wall
GRID_SLOTS = 24
GRID_FIRST = 6.0  # studs from the start line to slot 0
GRID_STEP = 4.0  # studs along the track between consecutive (alternating) slots
GRID_CELL = 64.0  # lattice step of the "grid" method; corners are arcs of GRID_CELL / 2
MAX_ATTEMPTS = 64
DECIMALS = 3

_TARGET_LENGTH = (1100.0, 2350.0)  # generators aim inside GEN_LENGTH, away from the edges


# --------------------------------------------------------------------------- geometry helpers


def centerline_array(spec: dict) -> np.ndarray:
    """Centre-line points as an (N, 2) float64 array (closed loop, first point not repeated)."""
    points = spec["centerline"]
    if isinstance(points, list) and all(isinstance(q, list) and len(q) == 2 for q in points):
        # the usual [[x, y], ...] in one pass over the numbers: half the time of np.asarray
        return np.fromiter(itertools.chain.from_iterable(points), np.float64, 2 * len(points)).reshape(-1, 2)
    return np.asarray(points, dtype=np.float64).reshape(-1, 2)


def cumulative_length(spec: dict) -> np.ndarray:
    """Arc length at each point, shape (N + 1,): ``[0, |p1-p0|, ..., length]``.

    The last entry closes the loop (point N-1 back to point 0), so it equals the track length.
    ``np.interp(s % L, cum, ...)`` maps an arc length to a segment.
    """
    return _cumulative(centerline_array(spec))


def tangents(spec: dict) -> np.ndarray:
    """Unit tangents along the track direction at each point, shape (N, 2) (central differences)."""
    return _tangents(centerline_array(spec))


def walls(spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """Wall polylines ``(left, right)``, each (N, 2), closed like the centre line.

    ``left`` is on the driver's left when driving the track direction: centre + normal * w with
    normal = tangent rotated +90 degrees; ``right`` is centre - normal * w.
    """
    return offset_walls(centerline_array(spec), np.asarray(spec["half_width"], dtype=np.float64))


# These run a dozen times per generated track on a few hundred points, where the call overhead
# of np.roll and np.linalg.norm was most of the cost; _next, _prev and _norms give the same
# numbers for a fifth of it.


def _next(a: np.ndarray) -> np.ndarray:
    """a[i + 1] at each i around the loop (np.roll(a, -1, axis=0))."""
    return np.concatenate([a[1:], a[:1]])


def _prev(a: np.ndarray) -> np.ndarray:
    """a[i - 1] at each i around the loop (np.roll(a, 1, axis=0))."""
    return np.concatenate([a[-1:], a[:-1]])


def _norms(v: np.ndarray) -> np.ndarray:
    """Length of each row of v (n, 2): np.linalg.norm(v, axis=1), bit for bit."""
    return np.sqrt(v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1])


def _unit_rows(v: np.ndarray) -> np.ndarray:
    """Rows of v (n, 2) scaled to length 1 (zero rows stay zero)."""
    n = _norms(v)[:, None]
    return v / np.where(n > 0, n, 1.0)


def _cumulative(p: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(_norms(_next(p) - p))])


def _tangents(p: np.ndarray) -> np.ndarray:
    return _unit_rows(_next(p) - _prev(p))


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """z of the 2-D cross product, row-wise (np.cross on 2-D vectors is deprecated)."""
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _left_normals(t: np.ndarray) -> np.ndarray:
    return np.stack([-t[:, 1], t[:, 0]], axis=1)


def offset_walls(points: np.ndarray, half_width: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``walls`` of a centre line (N, 2) and half widths (N,) already read as float64 arrays."""
    off = _left_normals(_tangents(points)) * half_width[:, None]
    return points + off, points - off


def _corner_radii(p: np.ndarray) -> np.ndarray:
    """Radius of the circle through each point and its two neighbours (inf on straights)."""
    a, b = _prev(p), _next(p)
    ab, bc, ca = p - a, b - p, a - b
    cross = np.abs(ab[:, 0] * bc[:, 1] - ab[:, 1] * bc[:, 0])
    prod = _norms(ab) * _norms(bc) * _norms(ca)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(cross > 1e-12, prod / (2.0 * cross), np.inf)


def _resample(p: np.ndarray, n: int, cum: np.ndarray) -> np.ndarray:
    """n points evenly spaced by arc length along the closed polyline p (``cum = _cumulative(p)``)."""
    s = (np.arange(n) * (cum[-1] / n)) % cum[-1]
    closed = np.vstack([p, p[:1]])
    return np.stack([np.interp(s, cum, closed[:, 0]), np.interp(s, cum, closed[:, 1])], axis=1)


def _point_at(p: np.ndarray, cum: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Position, unit tangent and segment index at arc lengths s (any real, wraps) along p
    (``cum = _cumulative(p)``)."""
    s = np.mod(s, cum[-1])
    i = np.minimum(np.maximum(np.searchsorted(cum, s, side="right") - 1, 0), len(p) - 1)  # np.clip, at a third
    f = ((s - cum[i]) / np.maximum(cum[i + 1] - cum[i], 1e-12))[:, None]
    j = (i + 1) % len(p)
    ti, tj = (_unit_rows(p[(k + 1) % len(p)] - p[k - 1]) for k in (i, j))  # _tangents(p) at i and j
    tan = ti * (1 - f) + tj * f  # blend vertex tangents: smooth headings on curves
    tan /= _norms(tan)[:, None]
    return p[i] * (1 - f) + p[j] * f, tan, i


@functools.lru_cache(maxsize=64)
def _basis(per_span: int) -> np.ndarray:
    """Weights (per_span, 4) of a cubic B-spline span's 4 control points at per_span even steps
    (cached, so read-only: a track needs two, and their polynomials cost more than the spline)."""
    u = np.arange(per_span) / per_span
    basis = np.stack([(1 - u) ** 3, 3 * u**3 - 6 * u**2 + 4, -3 * u**3 + 3 * u**2 + 3 * u + 1, u**3], axis=1) / 6.0
    basis.flags.writeable = False
    return basis


def _bspline(ctrl: np.ndarray, per_span: int) -> np.ndarray:
    """Closed uniform cubic B-spline through (well, near) the control polygon: smooth, no overshoot."""
    k = len(ctrl)
    idx = (np.arange(k)[:, None] + np.arange(-1, 3)[None, :]) % k  # 4 control points per span
    spans = np.einsum("uj,kjd->kud", _basis(per_span), ctrl[idx])
    return spans.reshape(-1, 2)


# --------------------------------------------------------------------------------- generators


def _smooth_loop(ctrl: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """B-spline of a unit-size control loop, scaled to a random target length (or larger, if a
    corner would be tighter than GEN_CORNER_RADIUS), sampled about every 2 studs."""
    coarse = _bspline(ctrl, 32)
    length = _cumulative(coarse)[-1]
    scale = rng.uniform(*_TARGET_LENGTH) / length
    scale = max(scale, 1.1 * GEN_CORNER_RADIUS / float(np.min(_corner_radii(coarse))))
    if scale * length > _TARGET_LENGTH[1]:
        return None  # too twisty for its size: redraw rather than make a huge track
    ctrl = (ctrl - ctrl.mean(axis=0)) * scale
    # dense enough that resampling at SPACING never sees a polyline kink
    span = np.diff(_cumulative(coarse * scale)[::32])
    return _bspline(ctrl, int(np.ceil(span.max() / 2.0)))


def _polar(rng: np.random.Generator) -> np.ndarray | None:
    n = int(rng.integers(8, 17))
    angles = (np.arange(n) + rng.uniform(-0.35, 0.35, n)) * (2 * np.pi / n)
    radii = 1.0 + rng.uniform(0.2, 0.6) * rng.uniform(-1.0, 1.0, n)
    stretch = rng.uniform(0.75, 1.0)  # mild ellipse so loops are not all circles
    ctrl = np.stack([np.cos(angles) * radii, stretch * np.sin(angles) * radii], axis=1)
    return _smooth_loop(ctrl, rng)


def _convex_hull(pts: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; counter-clockwise, no repeated point."""
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))].tolist()  # a dozen points: Python floats are faster

    def half(seq: list) -> list:
        out: list = []
        for qx, qy in seq:
            while len(out) >= 2:
                (ax, ay), (bx, by) = out[-2], out[-1]
                if (bx - ax) * (qy - ay) - (by - ay) * (qx - ax) > 0:  # _cross(b - a, q - a): a left turn
                    break
                out.pop()
            out.append((qx, qy))
        return out

    lower, upper = half(pts), half(pts[::-1])
    return np.array(lower[:-1] + upper[:-1])


def _drop_close(poly: np.ndarray, min_dist: float) -> np.ndarray:
    """Drop vertices closer than min_dist to the previous kept one: short edges make kinks."""
    keep = [poly[0]]
    for q in poly[1:]:
        if np.linalg.norm(q - keep[-1]) >= min_dist:
            keep.append(q)
    if len(keep) > 3 and np.linalg.norm(keep[0] - keep[-1]) < min_dist:
        keep.pop()
    return np.array(keep)


def _hull(rng: np.random.Generator) -> np.ndarray | None:
    pts = rng.uniform(0.0, 1.0, (int(rng.integers(10, 21)), 2)) * [1.0, rng.uniform(0.5, 0.9)]
    poly = _drop_close(_convex_hull(pts), 0.15)
    if len(poly) < 3:
        return None
    # midpoint displacement: split each edge, push the midpoint out (>0) or in (<0) by up to
    # 40% of the edge length; one round only, a second one mostly adds kinks
    nxt = _next(poly)
    edge = nxt - poly
    outward = np.stack([edge[:, 1], -edge[:, 0]], axis=1)  # right normal = outside of a CCW loop
    push = rng.uniform(0.25, 0.45) * rng.uniform(-1.0, 0.8, len(poly))
    mid = (poly + nxt) / 2 + outward * push[:, None]
    poly = np.stack([poly, mid], axis=1).reshape(-1, 2)
    return _smooth_loop(poly, rng)


def _polyomino(rng: np.random.Generator, target_perimeter: int, size: tuple[int, int]) -> set:
    """Grow a random set of lattice cells with no holes and no diagonal pinches: from a random
    cell, add random cells that share a side with it (when they grow it cleanly) until its
    perimeter reaches the target."""
    w, h = size
    cells = np.zeros((w + 2, h + 2), dtype=bool)  # cell (x, y) at [x + 1, y + 1], in an empty border
    cells[int(rng.integers(w)) + 1, int(rng.integers(h)) + 1] = True
    for _ in range(w * h * 4):
        if track_kernels.perimeter(cells) >= target_perimeter:
            break
        cand = track_kernels.frontier(cells)  # in sorted (x, y) order
        if not len(cand):
            break
        x, y = divmod(int(cand[int(rng.integers(len(cand)))]), h)
        if track_kernels.grows_cleanly(cells, x, y):
            cells[x + 1, y + 1] = True
    return {(x - 1, y - 1) for x, y in np.argwhere(cells).tolist()}


def _boundary_loop(cells: set) -> np.ndarray:
    """Counter-clockwise boundary of a hole-free, pinch-free polyomino, one lattice vertex per step."""
    nxt = {}
    for x, y in cells:
        if (x, y - 1) not in cells:
            nxt[(x, y)] = (x + 1, y)
        if (x + 1, y) not in cells:
            nxt[(x + 1, y)] = (x + 1, y + 1)
        if (x, y + 1) not in cells:
            nxt[(x + 1, y + 1)] = (x, y + 1)
        if (x - 1, y) not in cells:
            nxt[(x, y + 1)] = (x, y)
    v0 = min(nxt)
    loop, v = [v0], nxt[v0]
    while v != v0:
        loop.append(v)
        v = nxt[v]
    return np.array(loop, dtype=np.float64)


_ARC = np.linspace(0.0, np.pi / 2, 33)  # corner arcs in ~1.6 stud chords: no kinks after resampling


def _round_corners(vertices: np.ndarray, radius: float) -> np.ndarray:
    """Replace each 90-degree lattice corner by a quarter circle from edge midpoint to midpoint."""
    din, dout = vertices - _prev(vertices), _next(vertices) - vertices
    corner = np.abs(din[:, 0] * dout[:, 1] - din[:, 1] * dout[:, 0]) > 0
    v, a, b = vertices[corner], _unit_rows(din[corner]), _unit_rows(dout[corner])  # one row per corner
    p0 = v - a * radius
    centre = p0 + b * radius  # the arc's centre is on the inside of the turn
    # walk from p0 to v + b*radius around the centre, corner by corner (arc points along axis 1)
    u0x, u0y = (p0 - centre).T[:, :, None]
    turn = np.sign(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])[:, None]  # left 1, right -1
    c, s = np.cos(_ARC), turn * np.sin(_ARC)  # the arc turned either way (cos even, sin odd)
    arcs = centre[:, None, :] + np.stack([u0x * c - u0y * s, u0x * s + u0y * c], axis=2)
    return arcs.reshape(-1, 2)


def _grid(rng: np.random.Generator) -> np.ndarray | None:
    size = (int(rng.integers(5, 9)), int(rng.integers(4, 7)))
    target = int(rng.integers(20, 37))
    cells = _polyomino(rng, target, size)
    vertices = _boundary_loop(cells) * GRID_CELL
    pts = _round_corners(vertices, GRID_CELL / 2)
    if not _TARGET_LENGTH[0] <= _cumulative(pts)[-1] <= _TARGET_LENGTH[1]:
        return None
    return pts - pts.mean(axis=0)


_GENERATORS = {"polar": _polar, "hull": _hull, "grid": _grid}


def _half_widths(rng: np.random.Generator, method: str, n: int) -> np.ndarray:
    """Road half-width per point: constant on grid tiles, a smooth periodic wave otherwise."""
    base = rng.uniform(12.5, 15.0)
    if method == "grid":
        return np.full(n, base)
    u = np.arange(n) / n
    wave = np.zeros(n)
    for f in (1, 2, 3):
        wave += rng.uniform(-1.0, 1.0) * np.sin(2 * np.pi * (f * u + rng.uniform()))
    wave *= rng.uniform(0.0, 1.5) / max(np.max(np.abs(wave)), 1e-9)
    return np.clip(base + wave, *GEN_HALF_WIDTH)


def _straightest_start(p: np.ndarray) -> int:
    """Index whose preceding stretch (where the grid goes) turns the least: start on a straight."""
    t = _tangents(p)
    prev = _prev(t)
    turn = np.abs(np.arctan2(_cross(prev, t), np.sum(prev * t, axis=1)))
    behind = int(math.ceil((GRID_FIRST + GRID_STEP * GRID_SLOTS) / SPACING)) + 2
    window = np.ones(behind + 4)  # the grid plus a few points past the line
    padded = np.concatenate([turn[-behind:], turn, turn[:4]])
    cost = np.convolve(padded, window, mode="valid")[: len(p)]
    return int(np.argmin(np.round(cost, 9)))  # rounding: ties break the same on every platform


# ------------------------------------------------------------------------------ spec assembly


def _grid_slots(p: np.ndarray, hw: np.ndarray, cum: np.ndarray, step: float = GRID_STEP) -> np.ndarray:
    """Two staggered columns behind point 0; slot k alternates left / right of the centre. On a
    road too narrow for the columns to sit side by side, the slots go one car length apart."""
    k = np.arange(GRID_SLOTS)
    s = -(GRID_FIRST + step * k)
    pos, tan, i = _point_at(p, cum, s)
    w = np.minimum(hw[i], hw[(i + 1) % len(hw)])
    lateral = np.minimum(0.4 * w, w - SLOT_MARGIN - 1.0) * np.where(k % 2 == 0, 1.0, -1.0)
    pos = pos + _left_normals(tan) * lateral[:, None]
    if step == GRID_STEP:
        gap = _norms((pos[:, None] - pos[None, :]).reshape(-1, 2)).reshape(len(pos), len(pos))
        np.fill_diagonal(gap, np.inf)
        # side by side does not fit, or slots overlap in a tight corner (never on a generated
        # track: validate refuses that, so their grids stay as they were)
        if np.diagonal(gap, 1).min() < 2 * CAR_RADIUS + 0.5 or gap.min() < 2 * CAR_RADIUS:
            return _grid_slots(p, hw, cum, 2 * CAR_RADIUS + 1.5)
    return np.column_stack([pos, np.arctan2(tan[:, 1], tan[:, 0])])


def _round(a: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(a, dtype=np.float64), DECIMALS)


def _assemble(p: np.ndarray, hw: np.ndarray, name: str, method: str, seed: int) -> tuple[dict, tuple]:
    """The spec, and its arrays (centerline, half_width, grid, length) as ``validate`` reads them."""
    centerline, half_width = _round(p), _round(hw)
    cum = _cumulative(centerline)
    grid = _round(_grid_slots(centerline, half_width, cum))
    length = round(float(cum[-1]), DECIMALS)
    spec = {
        "version": VERSION,
        "name": name,
        "method": method,
        "seed": int(seed),
        "centerline": centerline.tolist(),
        "half_width": half_width.tolist(),
        "grid": grid.tolist(),
        "length": length,
    }
    return spec, (centerline, half_width, grid, length)


def from_centerline(points, half_width, *, name: str = "custom", method: str = "custom", seed: int = 0) -> dict:
    """Build a spec from any closed polyline (e.g. a hand-made track); the start is at points[0].

    ``points`` (M, 2) is resampled evenly to ~``SPACING`` studs; ``half_width`` is a number or one
    value per input point (interpolated by arc length). The result is not validated: call
    ``validate`` on it.
    """
    src = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    cum = _cumulative(src)
    n = max(int(round(cum[-1] / SPACING)), 8)
    p = _resample(src, n, cum)
    hw_src = np.broadcast_to(np.asarray(half_width, dtype=np.float64), (len(src),))
    s = np.arange(n) * (cum[-1] / n)
    hw = np.interp(s, cum, np.append(hw_src, hw_src[0]))
    return _assemble(p, hw, name, method, seed)[0]


def _fillet(points: np.ndarray, half_width: np.ndarray, radius: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The closed polygon ``points`` (M, 2) with each corner rounded to a circular arc of
    ``radius`` (tangent to both edges, at most half of either edge used), sampled every <= 1 stud;
    and the half width at each sampled point (corner i's arc has ``half_width[i]``, straights blend)."""
    m = len(points)
    out, widths = [], []
    for i in range(m):
        a, v, c = points[i - 1], points[i], points[(i + 1) % m]
        din, dout = v - a, c - v
        lin, lout = math.hypot(*din), math.hypot(*dout)
        din, dout = din / lin, dout / lout
        turn = math.atan2(din[0] * dout[1] - din[1] * dout[0], din[0] * dout[0] + din[1] * dout[1])
        t = min(radius[i] * math.tan(abs(turn) / 2), 0.5 * min(lin, lout))
        if abs(turn) < 1e-9 or t <= 0.0:
            out.append(v[None, :])
            widths.append(half_width[i : i + 1])
            continue
        r = t / math.tan(abs(turn) / 2)
        sign = 1.0 if turn > 0 else -1.0
        p0 = v - din * t
        centre = p0 + sign * r * np.array([-din[1], din[0]])
        k = max(int(math.ceil(r * abs(turn))), 2)
        phi = sign * np.linspace(0.0, abs(turn), k + 1)
        u = p0 - centre
        arc = centre + np.stack([u[0] * np.cos(phi) - u[1] * np.sin(phi), u[0] * np.sin(phi) + u[1] * np.cos(phi)], 1)
        out.append(arc)
        widths.append(np.full(len(arc), half_width[i]))
    return np.concatenate(out), np.concatenate(widths)


def from_waypoints(
    points, half_width, radius, *, name: str = "custom", method: str = "waypoints", seed: int = 0
) -> dict:
    """Build a spec the way a track is laid out in Roblox: the corners of a closed polygon
    (checkpoints or waypoint parts, in driving order; the start line is halfway along the
    straight from the last corner to the first, the grid behind it), each rounded to an
    arc of ``radius`` studs, straight road between; ``half_width`` and ``radius`` are one number
    or one per corner. Where two arcs would overlap, an arc is made as large as its edges allow
    (``validate`` says if that is too tight). The Luau port is ``roblox/src/shared/TrackSpec.luau``
    (tests/test_track_files.py checks they agree). Not validated: call ``validate`` on it.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 3:
        raise ValueError(f"a track needs at least 3 waypoints, got {len(pts)}")
    if (_norms(_next(pts) - pts) < 1e-6).any():
        raise ValueError("two consecutive waypoints are at the same place: remove one")
    hw = np.broadcast_to(np.asarray(half_width, dtype=np.float64), (len(pts),))
    rad = np.broadcast_to(np.asarray(radius, dtype=np.float64), (len(pts),))
    dense, widths = _fillet(pts, hw, rad)
    # the start line halfway along the straight into the first corner: the grid sits on a straight
    dense = np.vstack([(dense[-1] + dense[0]) / 2, dense])
    widths = np.append((widths[-1] + widths[0]) / 2, widths)
    return from_centerline(dense, widths, name=name, method=method, seed=seed)


def _candidate(seed: int, method: str, attempt: int) -> tuple[dict, tuple] | None:
    """A candidate spec (and its arrays, see ``_assemble``) from the generator, or None."""
    rng = np.random.default_rng([seed, attempt])  # derived sub-seed per attempt
    dense = _GENERATORS[method](rng)
    if dense is None:
        return None
    if rng.uniform() < 0.5:
        dense = dense[::-1]  # drive it the other way round: as many right turns as left ones
    cum = _cumulative(dense)
    p = _resample(dense, int(round(cum[-1] / SPACING)), cum)
    n = len(p)
    hw = _half_widths(rng, method, n)
    start = _straightest_start(p)
    p, hw = np.concatenate([p[start:], p[:start]]), np.concatenate([hw[start:], hw[:start]])  # np.roll(., -start)
    return _assemble(p, hw, f"{method}-{seed}", method, seed)


def _circuit(rng: np.random.Generator, d: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Waypoints of a circuit as people draw them (corners, half widths, corner radii; see
    ``from_waypoints``): a star-shaped polygon, often stretched into long straights, with some
    corners pulled inwards into hairpins and chicanes on long straights; difficulty ``d`` (0..1)
    adds hairpins and chicanes, narrows the road and tightens the corners."""
    n = int(rng.integers(5, 9 + int(6 * d)))
    angles = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * (2 * np.pi / n)
    radii = 1.0 + rng.uniform(0.15, 0.45) * rng.uniform(-1.0, 1.0, n)
    dents = rng.uniform(size=n) < 0.1 + 0.35 * d  # corners pulled in: the road folds back, a hairpin
    radii[dents] *= rng.uniform(0.3, 0.6, int(dents.sum()))
    pts = np.stack([np.cos(angles) * radii, rng.uniform(0.35, 1.0) * np.sin(angles) * radii], axis=1)
    length = rng.uniform(700.0, 2200.0 + 2800.0 * d)
    pts *= length / _cumulative(pts)[-1]
    base = rng.uniform(11.0, 15.0) - d * rng.uniform(0.0, 5.0)
    hw = np.clip(base + rng.uniform(-1.0, 1.0, n) * (0.5 + 3.0 * d), MIN_HALF_WIDTH, GEN_HALF_WIDTH[1])
    rmin = MIN_CORNER_RADIUS + (1.0 - d) * 25.0
    rad = np.maximum(rng.uniform(rmin, rmin + 90.0 * (1.0 - 0.5 * d), n), hw + INNER_MARGIN + 1.0)
    rad[dents] = np.maximum(rmin * rng.uniform(1.0, 1.5, int(dents.sum())), hw[dents] + INNER_MARGIN + 1.0)
    out_p, out_w, out_r = [], [], []
    for i in range(n):
        out_p.append(pts[i]), out_w.append(hw[i]), out_r.append(rad[i])
        a, b = pts[i], pts[(i + 1) % n]
        edge = float(np.hypot(*(b - a)))
        if edge > 260.0 and rng.uniform() < 0.7 * d:  # a chicane in the middle of a long straight
            u = (b - a) / edge
            side = np.array([-u[1], u[0]]) * rng.choice([-1.0, 1.0]) * rng.uniform(1.5, 2.5) * hw[i]
            run = rng.uniform(22.0, 35.0)
            mid = (a + b) / 2
            for k, off in ((-1.5, 0.0), (-0.5, 1.0), (0.5, 1.0), (1.5, 0.0)):
                out_p.append(mid + u * run * k + side * off), out_w.append(hw[i]), out_r.append(rmin + 10.0)
    return np.array(out_p), np.array(out_w), np.array(out_r)


def _varied_half_widths(rng: np.random.Generator, n: int, d: float) -> np.ndarray:
    """The classic shapes' half widths at difficulty d: narrower, and changing along the lap."""
    base = rng.uniform(12.5, 15.0) - d * rng.uniform(0.0, 6.0)
    u = np.arange(n) / n
    steps = np.interp(u, np.sort(rng.uniform(0, 1, 4)), rng.uniform(-1, 1, 4), period=1.0)  # wide and narrow parts
    return np.clip(base + (0.5 + 3.0 * d) * steps, MIN_HALF_WIDTH, GEN_HALF_WIDTH[1])


def _varied_candidate(seed: int, method: str, attempt: int, d: float) -> tuple[dict, tuple] | None:
    rng = np.random.default_rng([seed, attempt, 1])  # a stream of its own: not the classic tracks
    if method == "circuit":
        pts, hw_pts, rad = _circuit(rng, d)
        if (_norms(_next(pts) - pts) < 1e-6).any():
            return None
        dense, widths = _fillet(pts, hw_pts, rad)
    else:
        dense, widths = _GENERATORS[method](rng), None
        if dense is None:
            return None
    if rng.uniform() < 0.5:
        dense = dense[::-1]
        widths = None if widths is None else widths[::-1]
    cum = _cumulative(dense)
    n = int(round(cum[-1] / SPACING))
    if n < 8:
        return None
    p = _resample(dense, n, cum)
    if widths is None:
        hw = _varied_half_widths(rng, n, d)
    else:
        hw = np.interp(np.arange(n) * (cum[-1] / n), cum, np.append(widths, widths[0]))
    start = _straightest_start(p)
    p, hw = np.concatenate([p[start:], p[:start]]), np.concatenate([hw[start:], hw[:start]])
    return _assemble(p, hw, f"{method}-{seed}-d{d:g}", method, seed)


def generate(seed: int, method: str | None = None, difficulty: float | None = None) -> dict:
    """A valid track spec for ``seed`` (int >= 0); ``method=None`` picks ``METHODS[seed % 3]``.

    Candidates come from ``default_rng([seed, attempt])`` for attempt = 0, 1, ...; the first
    one that passes ``validate`` is returned, so the result depends on the seed alone.

    ``difficulty`` (0..1) switches to the varied generators, for drivers that must handle the
    tracks people draw: the classic shapes with narrower roads whose width changes along the lap,
    plus ``"circuit"`` (``method=None`` then picks ``ALL_METHODS[seed % 4]``): hand-drawn-like
    polygons with long straights, hairpins and chicanes. Higher difficulty: more hairpins and
    chicanes, tighter corners (radius from 40 down to 15 studs), narrower roads (half width down
    to 5.5), longer laps (up to ~5,000 studs). Held to ``validate``'s limits. ``None``: the
    classic tracks, the same as ever for a seed.
    """
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    methods = METHODS if difficulty is None else ALL_METHODS
    if method is None:
        method = methods[seed % len(methods)]
    if method not in methods:
        hint = ' ("circuit" needs a difficulty)' if method in ALL_METHODS else ""
        raise ValueError(f"unknown method {method!r}; expected one of {methods}{hint}")
    if difficulty is not None and not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be within 0..1, got {difficulty}")
    last: list[str] = ["generator gave up"]
    for attempt in range(MAX_ATTEMPTS):
        if difficulty is None:
            candidate = _candidate(seed, method, attempt)
        else:
            candidate = _varied_candidate(seed, method, attempt, float(difficulty))
        if candidate is None:
            continue
        spec, arrays = candidate
        box = _GENERATED if difficulty is None else _ROBLOX
        last = _problems(spec["version"], *arrays, box)  # validate without reading the lists back
        if not last:
            return spec
    raise RuntimeError(f"no valid {method} track for seed {seed} in {MAX_ATTEMPTS} attempts: {last[:3]}")


def difficulty_at(schedule: str | float | None, progress: float) -> float | None:
    """The generators' difficulty at ``progress`` (0..1 of a training run) under ``schedule``:
    None (the classic tracks), a number ``"0.6"`` (constant) or a curriculum ``"0.2:1"`` (linear
    from the first value to the second over the run). ValueError says how to write it."""
    if schedule is None or schedule == "":
        return None
    try:
        parts = [float(x) for x in str(schedule).split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or not all(0.0 <= x <= 1.0 for x in parts):
        raise ValueError(
            f"track difficulty {schedule!r}: give a number 0..1 (e.g. 0.5) or a ramp START:END (e.g. 0.2:1)"
        )
    start, end = parts[0], parts[-1]
    return round(start + (end - start) * min(max(progress, 0.0), 1.0), 3)


# --------------------------------------------------------------------------------- validation


def _segment_crossings(a: np.ndarray, b: np.ndarray, skip) -> np.ndarray:
    """Pairs (i, j), i < j, of segments a[k]->b[k] that touch or cross, in (i, j) order, without
    the pairs where skip(i, j) says so.

    Only segments near each other are compared: on a lattice of cells at least as large as any
    segment, each segment covers at most 2x2 cells, and ``track_kernels.touching_pairs`` sweeps
    the segments in x, trying the pairs whose cells overlap: O(n) instead of O(n^2).
    """
    a, b = np.ascontiguousarray(a, np.float64), np.ascontiguousarray(b, np.float64)
    cell = max(float(np.max(_norms(b - a))), 1e-6)
    lo = np.floor(np.minimum(a, b) / cell).astype(np.int64)
    hi = np.floor(np.maximum(a, b) / cell).astype(np.int64)
    pairs = track_kernels.touching_pairs(a, b, lo, hi, np.argsort(lo[:, 0], kind="stable"))
    pairs = pairs[~skip(pairs[:, 0], pairs[:, 1])]  # before sorting: most pairs are neighbours
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _at(p: np.ndarray, i: int) -> str:
    """How a message names centre-line point i: its index and where it is."""
    return f"point {i} ({p[i, 0] + 0.0:.1f}, {p[i, 1] + 0.0:.1f})"  # + 0.0: no "-0.0"


def _wall_problems(p: np.ndarray, hw: np.ndarray) -> list[str]:
    n = len(p)
    left, right = offset_walls(p, hw)
    a = np.concatenate([left, right])
    b = np.concatenate([_next(left), _next(right)])

    def neighbours(i, j):  # consecutive segments of one wall share an end point
        same_wall = (i // n) == (j // n)
        d = np.abs(i % n - j % n)
        return same_wall & ((d == 1) | (d == n - 1))

    out = []
    for i, j in _segment_crossings(a, b, neighbours)[:5]:
        kind = (int(i // n), int(j // n))
        what = {(0, 0): "left wall crosses itself", (1, 1): "right wall crosses itself"}.get(kind, "walls cross")
        fix = (
            "the track crosses itself: move one stretch away"
            if kind == (0, 1)
            else "narrow the road or widen the corner"
        )
        out.append(f"{what} between {_at(p, int(i % n))} and point {j % n}: {fix}")
    return out


def _same_corner(hw: np.ndarray) -> float:
    """Along-track distance within which two points may be close on the ground (one corner):
    a full turn at radius max(GEN_CORNER_RADIUS, widest half width + 8); 2 pi 24 for every
    generated track, as it always was."""
    return 2 * np.pi * max(GEN_CORNER_RADIUS, float(hw.max()) + 8.0)


def _clearance_problems(p: np.ndarray, hw: np.ndarray, cum: np.ndarray) -> list[str]:
    """Stretches of road far apart along the track must also be apart on the ground: beyond
    ``_same_corner`` along the track two points cannot belong to the same corner, so their walls
    must keep MIN_WALL_GAP (the worst pair is reported)."""
    i, j, dist, need = track_kernels.worst_clearance(
        np.ascontiguousarray(p), np.ascontiguousarray(hw), cum[:-1], cum[-1], _same_corner(hw), MIN_WALL_GAP
    )
    if i < 0:
        return []
    return [
        f"road sections too close: {_at(p, int(i))} and {_at(p, int(j))} are {dist:.1f} studs apart, "
        f"need {need:.1f} (both half widths plus a {MIN_WALL_GAP:g} stud gap): move them apart or narrow the road there"
    ]


def _grid_problems(g: np.ndarray, p: np.ndarray, hw: np.ndarray, cum: np.ndarray) -> list[str]:
    fix = " (tracks.from_centerline rebuilds the grid behind point 0)"
    if g.ndim != 2 or g.shape[1] != 3 or len(g) < 20:
        return [f"grid must hold at least 20 [x, y, heading] slots, got shape {g.shape}" + fix]
    d = _next(p) - p
    seg2 = np.maximum(np.sum(d * d, axis=1), 1e-12)
    k, f, dist = track_kernels.nearest_segments(np.ascontiguousarray(g[:, :2]), np.ascontiguousarray(p))
    w = hw[k] * (1 - f) + hw[(k + 1) % len(p)] * f
    out = []
    for i in np.flatnonzero(dist > w - SLOT_MARGIN)[:3]:
        out.append(f"grid slot {i} is {w[i] - dist[i]:.2f} studs from a wall (need {SLOT_MARGIN})" + fix)
    tdir = d[k] / np.sqrt(seg2[k])[:, None]
    facing = np.cos(g[:, 2]) * tdir[:, 0] + np.sin(g[:, 2]) * tdir[:, 1]
    for i in np.flatnonzero(facing < np.cos(np.radians(30)))[:3]:
        out.append(f"grid slot {i} does not face the track direction" + fix)
    s = cum[k] + f * np.sqrt(seg2[k])
    for i in np.flatnonzero(s < cum[-1] - 250.0)[:3]:
        out.append(f"grid slot {i} is not just behind the start line (arc {s[i]:.1f} of {cum[-1]:.1f})" + fix)
    gap = _norms((g[:, None, :2] - g[None, :, :2]).reshape(-1, 2)).reshape(len(g), len(g))
    np.fill_diagonal(gap, np.inf)  # a slot and itself
    gap = gap.min()
    if gap < 2 * CAR_RADIUS:
        out.append(f"grid slots overlap ({gap:.2f} studs apart)" + fix)
    return out


class _Box(NamedTuple):
    """The bounds one check of ``_problems`` holds a track to."""

    length: tuple[float, float]
    half_width: tuple[float, float]
    corner_radius: float
    radius_tolerance: float


_ROBLOX = _Box((MIN_LENGTH, MAX_LENGTH), (MIN_HALF_WIDTH, MAX_HALF_WIDTH), MIN_CORNER_RADIUS, RADIUS_TOLERANCE)
_GENERATED = _Box(GEN_LENGTH, GEN_HALF_WIDTH, GEN_CORNER_RADIUS, 0.0)  # exactly as generate always checked


def validate(spec: dict) -> list[str]:
    """Human-readable problems of a track spec, each naming the point and what to change; an
    empty list means valid.

    Checks: shape and finite numbers, ~SPACING point spacing, length within
    [MIN_LENGTH, MAX_LENGTH] (300..20,000 studs) and matching the points, half-widths within
    [MIN_HALF_WIDTH, MAX_HALF_WIDTH] (5.5..50), every centre-line corner radius >=
    MIN_CORNER_RADIUS (15: the car's tightest turn is MIN_TURN_RADIUS, 14.6) and >= the half width
    + INNER_MARGIN (the inner wall is a curve), walls neither self-intersecting nor crossing each
    other, distant road sections at least MIN_WALL_GAP apart, and >= 20 grid slots inside the
    road (SLOT_MARGIN from the walls), facing the track, just behind the start line.
    """
    try:
        p = np.asarray(spec["centerline"], dtype=np.float64)
        hw = np.asarray(spec["half_width"], dtype=np.float64)
        length = float(spec["length"])
        grid = np.asarray(spec["grid"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        return [f"malformed spec: {e!r} (a spec needs centerline, half_width, grid and length: PROTOCOL.md §3.4)"]
    return _problems(spec.get("version"), p, hw, grid, length)


def _problems(
    version, p: np.ndarray, hw: np.ndarray, grid: np.ndarray, length: float, box: _Box = _ROBLOX
) -> list[str]:
    """``validate`` on a spec's values as arrays, within ``box``."""
    problems = []
    if version != VERSION:
        problems.append(f"version must be {VERSION}, got {version!r}")
    if p.ndim != 2 or p.shape[1] != 2 or len(p) < 8:
        return problems + [f"centerline must be a list of >= 8 [x, y] points, got shape {p.shape}"]
    if hw.shape != (len(p),):
        return problems + [f"half_width needs one value per centre-line point ({len(p)}), got shape {hw.shape}"]
    if not (np.isfinite(p).all() and np.isfinite(hw).all() and np.isfinite(grid).all() and math.isfinite(length)):
        return problems + ["non-finite numbers in the spec"]
    if len(p) > 2 * box.length[1] / SPACING:
        return problems + [
            f"{len(p)} centre-line points: far too many for a track of at most {box.length[1]:g} studs "
            f"(points go about {SPACING:g} studs apart)"
        ]
    cum = _cumulative(p)
    seg = np.diff(cum)
    if seg.min() < 0.5 * SPACING or seg.max() > 1.5 * SPACING:
        i = int(np.argmax(np.abs(seg - SPACING)))
        problems.append(
            f"point spacing {seg.min():.2f}..{seg.max():.2f} studs, expected about {SPACING:g} (worst after "
            f"{_at(p, i)}): resample the centre line with tracks.from_centerline"
        )
    if abs(cum[-1] - length) > 0.01:
        problems.append(f"length {length} does not match the centre line: set it to {cum[-1]:.3f}")
    lo, hi = box.length
    if cum[-1] < lo:
        problems.append(f"track is {cum[-1]:.1f} studs long, shorter than {lo:g}: make the loop longer")
    elif cum[-1] > hi:
        problems.append(f"track is {cum[-1]:.1f} studs long, longer than {hi:g}: make the loop shorter")
    lo, hi = box.half_width
    if hw.min() < lo - 1e-9:
        i = int(np.argmin(hw))
        problems.append(
            f"road too narrow at {_at(p, i)}: half_width {hw[i]:.2f} < {lo:g} (the car's radius "
            f"{CAR_RADIUS:g} plus room to steer): widen it to {lo:g}"
        )
    if hw.max() > hi + 1e-9:
        i = int(np.argmax(hw))
        problems.append(
            f"road too wide at {_at(p, i)}: half_width {hw[i]:.2f} > {hi:g} (rays would miss the walls): narrow it to {hi:g}"
        )
    radii = _corner_radii(p)
    need = np.maximum(box.corner_radius, hw + INNER_MARGIN)
    if (radii < need - box.radius_tolerance).any():
        i = int(np.argmin(radii - need))
        why = (
            f"the car turns no tighter than {MIN_TURN_RADIUS:.1f}"
            if radii[i] < box.corner_radius
            else f"the inner wall folds at half_width {hw[i]:.1f}"
        )
        problems.append(
            f"corner too tight at {_at(p, i)}: radius {radii[i]:.1f} < {need[i]:.1f} ({why}): "
            f"round the corner off to a radius of at least {need[i]:.1f}"
            + (
                f" or narrow the road there to {radii[i] - INNER_MARGIN:.1f}"
                if radii[i] - INNER_MARGIN >= box.half_width[0]
                else ""
            )
        )
    problems += _wall_problems(p, hw)
    problems += _clearance_problems(p, hw, cum)
    problems += _grid_problems(grid, p, hw, cum)
    return problems


# ------------------------------------------------------------------------------- files and CLI


def save(spec: dict, path) -> None:
    """Write a spec as compact JSON (byte-identical for identical specs)."""
    Path(path).write_text(json.dumps(spec, separators=(",", ":")) + "\n")


def load(path) -> dict:
    """Read a spec written by ``save`` (or any JSON track spec)."""
    return json.loads(Path(path).read_text())


def track_files(paths) -> list[Path]:
    """The JSON files named by ``paths`` (files, or folders: their ``*.json``, sorted)."""
    out = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if not found:
                raise ValueError(f"{path}: no *.json track files in this folder")
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise ValueError(f"{path}: no such track file or folder")
    return out


def load_track(path) -> dict:
    """A track spec from a JSON file, checked by ``validate``: ValueError naming the file and
    its first problem (what to change) when it is not a valid track."""
    try:
        spec = json.loads(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"{path}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a track spec is a JSON object (PROTOCOL.md §3.4), got {type(spec).__name__}")
    problems = validate(spec)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ValueError(f"{path}: not a valid track: {problems[0]}{more}")
    return spec


def load_tracks(paths) -> list[dict]:
    """``load_track`` of every file ``track_files(paths)`` names; specs pass through unchanged."""
    if isinstance(paths, dict):
        paths = [paths]
    out = []
    for item in [paths] if isinstance(paths, (str, Path)) else paths:
        if isinstance(item, dict):
            problems = validate(item)
            if problems:
                raise ValueError(f"track {item.get('name', '?')!r} is not valid: {problems[0]}")
            out.append(item)
        else:
            out += [load_track(f) for f in track_files(item)]
    return out


def draw(spec: dict, path, size: int = 800) -> None:
    """Top-down PNG: road in grey, walls in black, start line red, grid slots blue (+y is up)."""
    from PIL import Image, ImageDraw

    p = centerline_array(spec)
    left, right = walls(spec)
    allpts = np.concatenate([left, right])
    lo, hi = allpts.min(axis=0), allpts.max(axis=0)
    scale = (size - 40) / max(float(np.max(hi - lo)), 1e-9)

    def px(q):
        q = np.atleast_2d(q)
        return [(20 + (x - lo[0]) * scale, size - 20 - (y - lo[1]) * scale) for x, y in q]

    img = Image.new("RGB", (size, size), (70, 130, 60))
    d = ImageDraw.Draw(img)
    for i in range(len(p)):  # road as quads between the walls
        j = (i + 1) % len(p)
        d.polygon(px(np.array([left[i], left[j], right[j], right[i]])), fill=(120, 120, 120))
    d.line(px(np.vstack([left, left[:1]])), fill=(0, 0, 0), width=2)
    d.line(px(np.vstack([right, right[:1]])), fill=(0, 0, 0), width=2)
    d.line(px(np.array([left[0], right[0]])), fill=(220, 30, 30), width=3)
    for x, y, h in spec["grid"]:
        (cx, cy), r = px([x, y])[0], max(CAR_RADIUS * scale, 2)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(40, 80, 220))
        d.line([(cx, cy), (cx + 2 * r * math.cos(h), cy - 2 * r * math.sin(h))], fill=(255, 255, 255))
    img.save(path)


def _summary(spec: dict, ms: float) -> str:
    hw = spec["half_width"]
    r = float(np.min(_corner_radii(centerline_array(spec))))
    return (
        f"{spec['name']}: length {spec['length']:.1f} studs, {len(spec['centerline'])} points, "
        f"half-width {min(hw):.1f}-{max(hw):.1f}, min corner radius {r:.1f}, "
        f"{len(spec['grid'])} grid slots ({ms:.1f} ms)"
    )


def main(argv: list[str] | None = None) -> int:
    from rbxenv import cli

    ap = cli.ArgumentParser(prog="python -m rbxenv.tracks", description="Generate, check or draw a race track spec.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", choices=ALL_METHODS, default=None, help="default: METHODS[seed %% 3]")
    ap.add_argument("--difficulty", type=float, default=None, help="0..1: the varied generators (see generate)")
    ap.add_argument(
        "--from-file", metavar="PATH", help="read this spec instead of generating one (checked by validate)"
    )
    ap.add_argument("-o", "--output", help="write the JSON spec here")
    ap.add_argument("--png", help="write a top-down picture here")
    args = ap.parse_args(argv)
    cli.check("rbxenv.tracks", args, {
        "--seed": cli.at_least(0),
        "--difficulty": cli.between(0, 1),
        "--from-file": cli.readable_file,
        "--png": lambda path: None if path.lower().endswith(".png") else "allowed: a path ending in .png",
    })  # fmt: skip
    t0 = time.perf_counter()
    if args.from_file:
        try:
            spec = load_track(args.from_file)
        except (OSError, ValueError) as e:  # not a track spec, or one that fails the checks
            cli.refuse("rbxenv.tracks", e if args.from_file in str(e) else f"--from-file {args.from_file}: {e}")
    else:
        spec = generate(args.seed, args.method, difficulty=args.difficulty)
    ms = (time.perf_counter() - t0) * 1000
    for path, write in ((args.output, save), (args.png, draw)):
        if path:
            try:
                write(spec, path)
            except OSError as err:  # a missing folder, a full disk, no permission
                cli.fail("rbxenv.tracks", f"cannot write {path} ({err.strerror or err})")
    print(_summary(spec, ms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
