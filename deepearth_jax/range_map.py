"""Range maps of a place-and-date species prior (SINR-style): p(species | place, date) over the region for
a few species, each at its own seasonal peak, with its training observations on top.

`plot_range_map(model, data, path)` takes a `GeoPrior` (its `normalizer` and `logits_at`) and the run's data
(training rows, classes). Written by `python -m deepearth_jax.evaluate` for geo prior runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from deepearth_jax.errors import CliError

log = logging.getLogger(__name__)

GRID = 96  # cells per side of the map
NUM_SPECIES = 4
_CHUNK = 4096


def peak_day_of_year(month: np.ndarray, day: np.ndarray) -> int:
    """The circular mean day of year (0..364) of dates given as month and day (a non-leap calendar)."""
    starts = np.cumsum([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30])
    doy = starts[np.clip(month.astype(int), 1, 12) - 1] + np.clip(day.astype(int), 1, 31) - 1
    angle = 2 * np.pi * doy / 365.0
    mean = np.arctan2(np.sin(angle).mean(), np.cos(angle).mean())
    return int(np.mod(np.round(mean / (2 * np.pi) * 365.0), 365))


def month_day(doy: int) -> tuple[int, int]:
    """(month, day) of a day of year 0..364 in a non-leap year."""
    date = np.datetime64("2001-01-01") + np.timedelta64(int(doy), "D")
    month = int(str(date)[5:7])
    return month, int(str(date)[8:10])


def probability_grid(
    model, classes: np.ndarray, box: dict, year: int, doys: list[int], sigmoid: bool = False
) -> np.ndarray:
    """(len(classes), GRID, GRID) probability of each of `classes` on a lat/lon grid over `box` (rows north to
    south), class i on day `doys[i]` of `year` at noon: softmax over species, or each species' own sigmoid
    (`sigmoid`, for presence models trained with SINR's loss). One jitted program, chunks of one shape."""
    lats = np.linspace(box["north"], box["south"], GRID)
    lons = np.linspace(box["west"], box["east"], GRID)
    lat, lon = (a.ravel() for a in np.meshgrid(lats, lons, indexing="ij"))
    place = np.stack([lat, lon, np.full_like(lat, np.nan)], axis=1)
    dates = [[year, *month_day(doy), 12, 0, 0] for doy in doys]
    location = np.tile(place, (len(doys), 1)).astype(np.float32)
    time = np.repeat(np.asarray(dates, np.float32), len(lat), axis=0)
    pad = -len(location) % _CHUNK
    location = np.concatenate([location, np.repeat(location[:1], pad, axis=0)])
    time = np.concatenate([time, np.repeat(time[:1], pad, axis=0)])

    @jax.jit
    def probs(location, time):
        logits = model.logits_at(model.normalizer(location, time)).astype(jnp.float32)
        return jax.nn.sigmoid(logits) if sigmoid else jax.nn.softmax(logits, axis=-1)

    out = np.concatenate(
        [
            np.asarray(probs(location[i : i + _CHUNK], time[i : i + _CHUNK]))
            for i in range(0, len(location), _CHUNK)
        ]
    )
    per_class = out[: len(doys) * len(lat)].reshape(len(doys), len(lat), -1)
    return np.stack([per_class[i, :, c] for i, c in enumerate(classes)]).reshape(len(classes), GRID, GRID)


def plot_range_map(
    model,
    data,
    path: str | Path,
    species: list[str] | None = None,
    num_species: int = NUM_SPECIES,
    sigmoid: bool = False,
) -> Path:
    """The PNG of the probability maps of `species` (training class names), by default the `num_species`
    most frequent in training; returns its path. CliError names an unknown species."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    store, train = data.store, data.train_rows
    lat, lon = store.column("latitude")[train], store.column("longitude")[train]
    labels = data.label_map[store.column("species_index")[train]]
    month, day, year = (store.column(c)[train] for c in ("month", "day", "year"))
    pad_lat, pad_lon = 0.03 * np.ptp(lat) + 1e-3, 0.03 * np.ptp(lon) + 1e-3
    box = {
        "north": float(lat.max() + pad_lat),
        "south": float(lat.min() - pad_lat),
        "west": float(lon.min() - pad_lon),
        "east": float(lon.max() + pad_lon),
    }
    counts = np.bincount(labels[labels >= 0], minlength=len(data.class_names))
    if species:
        index = {name: i for i, name in enumerate(data.class_names)}
        unknown = [name for name in species if name not in index]
        if unknown:
            raise CliError(f"--range-species: not a training species: {', '.join(unknown)}")
        classes = np.asarray([index[name] for name in species])
    else:
        classes = np.argsort(-counts, kind="stable")[: min(num_species, int((counts > 0).sum()))]
    last_year = int(np.nanmax(year))
    peaks = [peak_day_of_year(month[labels == c], day[labels == c]) for c in classes]
    cols = min(len(classes), 2)
    rows = int(np.ceil(len(classes) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.6 * rows), squeeze=False)
    for ax in axes.ravel()[len(classes) :]:
        ax.axis("off")
    extent = (box["west"], box["east"], box["south"], box["north"])
    grids = probability_grid(model, classes, box, last_year, peaks, sigmoid)
    for ax, c, peak, grid in zip(axes.ravel(), classes, peaks, grids, strict=False):
        image = ax.imshow(grid, extent=extent, origin="upper", cmap="viridis", vmin=0.0, aspect="auto")
        here = labels == c
        ax.scatter(
            lon[here], lat[here], s=6, c="#ff4d4d", edgecolors="white", linewidths=0.3, label="training"
        )
        m, d = month_day(peak)
        ax.set_title(
            f"{data.class_names[c]}\n{last_year}-{m:02d}-{d:02d} (its peak), {int(here.sum())} obs.",
            fontsize=9,
        )
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude")
        label = "p(present | place, date)" if sigmoid else "p(species | place, date)"
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label=label)
    fig.suptitle("geo prior: species probability over the region, training observations in red", fontsize=11)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log.info("wrote %s", path)
    return path
