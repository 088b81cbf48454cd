"""Checks on a plot saved as PNG, read back with matplotlib: its size in pixels, that it is not blank, and
which of matplotlib's default colours (C0, C1, ...: the series, in the order they were drawn) it shows."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# matplotlib's default colour cycle ("tab10"), as RGB in [0, 1]
CYCLE = [tuple(int(code[i:i + 2], 16) / 255 for i in (1, 3, 5)) for code in (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")]


def read_png(path: Path) -> np.ndarray:
    """[height, width, 3] RGB in [0, 1], alpha composited over white."""
    import matplotlib.image

    image = matplotlib.image.imread(str(path))
    assert image.dtype == np.float32 and image.ndim == 3, f"{path} is not an RGB(A) PNG"
    rgb, alpha = image[..., :3], image[..., 3:] if image.shape[2] == 4 else np.ones_like(image[..., :1])
    return rgb * alpha + (1 - alpha)


def pixels_of(image: np.ndarray, color, alpha: float = 1.0, tolerance: float = 0.03) -> int:
    """How many pixels show ``color`` drawn at ``alpha`` over white."""
    target = alpha * np.asarray(color) + (1 - alpha)
    return int((np.abs(image - target) <= tolerance).all(-1).sum())


def check_plot_png(path: Path, size_inches: tuple[float, float], dpi: int, series: int, alpha: float = 1.0,
                   min_pixels: int = 200, exact: bool = True) -> np.ndarray:
    """The PNG at ``path`` is ``size_inches`` at ``dpi``, has ink on it (not blank, not filled), and shows the
    first ``series`` colours of the default cycle (drawn at ``alpha``) on at least ``min_pixels`` pixels each
    (more than a legend's sample line: the series itself was drawn) and, if ``exact``, not the next colour.
    Returns the image."""
    image = read_png(path)
    width, height = size_inches
    assert image.shape[:2] == (round(height * dpi), round(width * dpi)), image.shape
    ink = float((image < 0.9).any(-1).mean())  # pixels that are not (near) white
    assert 0.01 < ink < 0.6, f"{path.name}: {ink:.1%} of the pixels are not white"
    counts = [pixels_of(image, color, alpha) for color in CYCLE[: series + 1]]
    assert all(count >= min_pixels for count in counts[:series]), (path.name, counts)
    if exact:
        assert counts[series] < 20, (path.name, counts)  # no more series than expected, not even in the legend
    return image
