"""Top-down pictures of the simulator with PIL: rgb arrays for GIFs, videos and TensorBoard.

North is +y (the picture matches Roblox Studio's top view of the spec, see PROTOCOL §3.4).
Drawn at 2x and downsampled for smooth edges.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from rbxenv.sim.rules import SimConfig
from rbxenv.sim.world import Sim, Track

GRASS = (46, 94, 52)
ROAD = (92, 92, 98)
WALL = (235, 235, 235)
START = (250, 250, 250)
# tab10: distinct car colours
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # fmt: skip
SCALE = 2  # supersampling


class _Canvas:
    def __init__(self, track: Track, size: int):
        pts = np.concatenate([track.left, track.right])
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        span = max(hi[0] - lo[0], hi[1] - lo[1]) * 1.06 + 1e-9
        self.center = (lo + hi) / 2
        self.px = size * SCALE / span  # pixels per stud
        self.size = size
        self.image = Image.new("RGB", (size * SCALE, size * SCALE), GRASS)
        self.draw = ImageDraw.Draw(self.image)

    def xy(self, p: np.ndarray) -> list[tuple[float, float]]:
        """Studs (k, 2) -> pixel tuples, +y up."""
        p = np.atleast_2d(p)
        c = self.size * SCALE / 2
        return list(
            zip(
                (c + (p[:, 0] - self.center[0]) * self.px).tolist(),
                (c - (p[:, 1] - self.center[1]) * self.px).tolist(),
                strict=True,
            )
        )

    def track(self, track: Track) -> None:
        left, right = track.left, track.right
        nxt = np.roll(np.arange(len(left)), -1)
        for i, j in enumerate(nxt):  # road cell by cell: works for any loop shape
            self.draw.polygon(self.xy(np.array([left[i], left[j], right[j], right[i]])), fill=ROAD, outline=ROAD)
        width = max(1, round(0.6 * self.px))
        for wall in (left, right):
            self.draw.line(self.xy(np.vstack([wall, wall[:1]])), fill=WALL, width=width)
        self.draw.line(self.xy(np.array([left[0], right[0]])), fill=START, width=max(2, round(1.0 * self.px)))

    def path(self, xs: np.ndarray, colors: list[tuple[int, int, int]] | tuple[int, int, int]) -> None:
        pts = self.xy(xs)
        width = max(2, round(0.8 * self.px))
        for k in range(len(pts) - 1):
            color = colors if isinstance(colors, tuple) else colors[k]
            self.draw.line([pts[k], pts[k + 1]], fill=color, width=width)

    def car(self, pos: np.ndarray, heading: float, radius: float, color, live: bool = True) -> None:
        """An oriented rectangle (2.4 radius long, 1.6 wide) with a white nose triangle."""
        f = np.array([np.cos(heading), np.sin(heading)])
        s = np.array([-f[1], f[0]])
        half_len, half_wid = 1.2 * radius, 0.8 * radius
        body = [pos + f * half_len + s * half_wid, pos - f * half_len + s * half_wid,
                pos - f * half_len - s * half_wid, pos + f * half_len - s * half_wid]  # fmt: skip
        fill = color if live else tuple(c // 3 for c in color)
        self.draw.polygon(self.xy(np.array(body)), fill=fill, outline=(0, 0, 0))
        nose = [
            pos + f * half_len,
            pos + f * 0.3 * half_len + s * 0.6 * half_wid,
            pos + f * 0.3 * half_len - s * 0.6 * half_wid,
        ]
        self.draw.polygon(self.xy(np.array(nose)), fill=(255, 255, 255))

    def array(self) -> np.ndarray:
        return np.asarray(self.image.resize((self.size, self.size), Image.LANCZOS))


def speed_colors(speeds: np.ndarray, vmax: float) -> list[tuple[int, int, int]]:
    """Blue (slow) -> green -> yellow -> red (fast), per speed value."""
    x = np.clip(np.asarray(speeds, dtype=np.float64) / vmax, 0.0, 1.0)
    stops = np.array([[40, 60, 220], [40, 200, 80], [245, 220, 40], [230, 40, 30]], dtype=np.float64)
    pos = x * (len(stops) - 1)
    k = np.minimum(pos.astype(int), len(stops) - 2)
    frac = (pos - k)[:, None]
    rgb = stops[k] * (1 - frac) + stops[k + 1] * frac
    return [tuple(int(c) for c in row) for row in rgb]


def render(sim: Sim, envid: str | None = None, size: int = 512, trajectories: list | None = None) -> np.ndarray:
    """Picture (size, size, 3) uint8 of one venv (default: the first) with its cars.

    trajectories: optional list of (k, 2) position arrays drawn under the cars, in car colours.
    """
    envid = envid or sim.envids[0]
    track = sim.track(envid)
    canvas = _Canvas(track, size)
    canvas.track(track)
    for k, xs in enumerate(trajectories or []):
        if len(xs) > 1:
            canvas.path(np.asarray(xs), PALETTE[k % len(PALETTE)])
    for k, agent in enumerate(a for a in sim.agent_ids if sim.venv_of(a) == envid):
        i = sim.index_of(agent)
        canvas.car(
            sim.pos[i], float(sim.heading[i]), sim.config.car_radius, PALETTE[k % len(PALETTE)], bool(sim.live[i])
        )
    return canvas.array()


def render_trajectories(
    spec: dict, xs: list | np.ndarray, speeds: list | np.ndarray, size: int = 512, vmax: float = 90.0
) -> np.ndarray:
    """Picture of driven paths on a track, coloured by speed (blue slow .. red fast, up to vmax).

    xs: one (k, 2) array or a list of them; speeds: matching (k,) arrays (studs/s).
    """
    if isinstance(xs, np.ndarray) and xs.ndim == 2:
        xs, speeds = [xs], [speeds]
    track = Track.from_spec(spec, SimConfig())
    canvas = _Canvas(track, size)
    canvas.track(track)
    for path, v in zip(xs, speeds, strict=True):
        if len(path) > 1:
            canvas.path(np.asarray(path), speed_colors(v, vmax))
    return canvas.array()
