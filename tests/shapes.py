"""Hand-made centre lines shared by the tests and the golden-vector scripts in tests/vectors/."""

from __future__ import annotations

import numpy as np


def horseshoe(gap: float, mid: float = 175.0, cap: float = 45.0) -> np.ndarray:
    """A C-shaped loop (ring sector with round ends) whose two ends are ``gap`` studs apart."""
    end = np.pi - np.arcsin((2 * cap + gap) / (2 * mid))
    a = np.linspace(-end, end, 600)
    u = np.linspace(0, np.pi, 100)[1:-1]

    def ring(r, ang):
        return np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1)

    def end_cap(ang, start):
        return mid * np.array([np.cos(ang), np.sin(ang)]) + ring(cap, start + u)

    return np.concatenate([ring(mid + cap, a), end_cap(end, end), ring(mid - cap, a[::-1]), end_cap(-end, np.pi - end)])
