"""Drawing helpers of the split map: colours, legend, scale bar, region boxes, buffer rings, axes, years."""

from __future__ import annotations

import math

import numpy as np

from deepearth_jax.data import geo
from deepearth_jax.data.split.reasons import Kind, of_kind

TRAIN_COLOR = "#2E86AB"
TEMPORAL_COLOR = "#A23B72"
SPATIAL_COLOR = "#E4572E"
REGION_COLOR = "#F18F01"
EXCLUDED_COLOR = "#8C8C8C"
VALIDATION_COLOR = "#2A9D55"  # validation points and boxes
VALIDATION_TEMPORAL_COLOR = "#8FD694"
FOLD_COLORS = (
    "#1F77B4 #FF7F0E #2CA02C #D62728 #9467BD #8C564B #E377C2 #17BECF #BCBD22 #7F7F7F "
    "#393B79 #637939 #8C6D31 #843C39 #7B4173 #3182BD #E6550D #31A354 #756BB1 #636363"
).split()


def buffer_km_of(payload: dict) -> float:
    """The holdout buffer of a payload, km (0 when none)."""
    return float(payload["split_strategy"].get("spatial_split", {}).get("buffer_km", 0.0) or 0.0)


def legend_below(ax, handles) -> None:
    """The map's legend, in three columns under the axes."""
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.07),
        ncol=3,
        fontsize=9,
        markerscale=2.0,
        frameon=False,
    )


def nice_km(width_km: float) -> float:
    """A round scale-bar length, about a fifth of the map width."""
    target = width_km / 5
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000):
        if step >= target:
            return float(step)
    return float(10 ** math.ceil(math.log10(target)))


def scale_bar(ax, lat: np.ndarray, lon: np.ndarray) -> None:
    south, north, west, east = lat.min(), lat.max(), lon.min(), lon.max()
    mid = 0.5 * (south + north)
    width_km = float(geo.geodesic_km(mid, west, mid, east))
    km = nice_km(max(width_km, 1e-3))
    bar_deg = km / (111.32 * math.cos(math.radians(mid)))  # true km along the parallel
    x0 = west + 0.04 * (east - west)
    y0 = south + 0.04 * (north - south)
    from matplotlib.patches import Rectangle

    ax.add_patch(
        Rectangle(
            (x0 - 0.01 * (east - west), y0 - 0.02 * (north - south)),
            bar_deg + 0.02 * (east - west),
            0.065 * (north - south),
            facecolor="white",
            alpha=0.8,
            edgecolor="none",
            zorder=5.5,
        )
    )
    ax.plot([x0, x0 + bar_deg], [y0, y0], color="black", lw=3, solid_capstyle="butt", zorder=6)
    for x in (x0, x0 + bar_deg):
        ax.plot(
            [x, x],
            [y0 - 0.006 * (north - south), y0 + 0.006 * (north - south)],
            color="black",
            lw=1.5,
            zorder=6,
        )
    ax.text(
        x0 + bar_deg / 2,
        y0 + 0.015 * (north - south),
        f"{km:g} km",
        ha="center",
        va="bottom",
        fontsize=10,
        fontweight="bold",
        zorder=6,
    )


def buffer_ring(bounds: dict, buffer_km: float, n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Outline of the set within buffer_km of a box: the box grown by rounded corners, in degrees."""
    mid = 0.5 * (bounds["north"] + bounds["south"])
    dlat, dlon = geo.degrees_for_km(buffer_km, mid)
    xs, ys = [], []
    corners = [
        (bounds["east"], bounds["north"], 0.0),
        (bounds["west"], bounds["north"], 90.0),
        (bounds["west"], bounds["south"], 180.0),
        (bounds["east"], bounds["south"], 270.0),
    ]
    for cx, cy, start in corners:
        angles = np.radians(np.linspace(start, start + 90.0, n))
        xs.extend(cx + float(dlon) * np.cos(angles))
        ys.extend(cy + float(dlat) * np.sin(angles))
    xs.append(xs[0])
    ys.append(ys[0])
    return np.asarray(xs), np.asarray(ys)


def draw_regions(ax, payload: dict, cols: dict, faint: bool, validation: bool = False) -> None:
    """Test region boxes (with `validation`: the validation boxes), buffer rings and `Rk (count)` labels."""
    from matplotlib.patches import Rectangle

    buffer_km = buffer_km_of(payload)
    lat_span = cols["lat"].max() - cols["lat"].min()
    regions = payload.get("validation_regions", []) if validation else payload["test_spatial_regions"]
    color = VALIDATION_COLOR if validation else REGION_COLOR
    kind, prefix = (Kind.VALIDATION_SPATIAL, "V") if validation else (Kind.SPATIAL_TEST, "R")
    for region in regions:
        b = region["bounds"]
        width, height = b["east"] - b["west"], b["north"] - b["south"]
        if not faint:
            ax.add_patch(
                Rectangle((b["west"], b["south"]), width, height, facecolor=color, alpha=0.15, zorder=1)
            )
        ax.add_patch(
            Rectangle(
                (b["west"], b["south"]),
                width,
                height,
                fill=False,
                edgecolor="black" if faint else color,
                lw=1.0 if faint else 2.2,
                ls="--" if faint else "-",
                zorder=5,
            )
        )
        if buffer_km > 0 and not faint:
            xs, ys = buffer_ring(b, buffer_km)
            ax.plot(xs, ys, color=color, lw=1.2, ls="--", zorder=5)
        count = int(of_kind(cols["reason"], kind, int(region["region_id"])).sum())
        top = b["north"] + (
            geo.degrees_for_km(buffer_km, b["north"])[0] if buffer_km > 0 and not faint else 0
        )
        ax.text(
            0.5 * (b["west"] + b["east"]),
            top + 0.008 * lat_span,
            f"{prefix}{region['region_id']}" if faint else f"{prefix}{region['region_id']} ({count})",
            ha="center",
            va="bottom",
            fontsize=9 if faint else 11,
            fontweight="bold",
            color="black" if faint else ("#1B6B3A" if validation else "#8A4B00"),
            zorder=7,
            bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1},
        )


def extent(payload: dict, cols: dict) -> tuple[float, float, float, float]:
    """`(south, north, west, east)` covering the points, region boxes and their buffer rings."""
    south, north = float(cols["lat"].min()), float(cols["lat"].max())
    west, east = float(cols["lon"].min()), float(cols["lon"].max())
    buffer_km = buffer_km_of(payload)
    for region in [*payload["test_spatial_regions"], *payload.get("validation_regions", [])]:
        b = region["bounds"]
        dlat, dlon = geo.degrees_for_km(buffer_km, 0.5 * (b["north"] + b["south"]))
        south, north = min(south, b["south"] - dlat), max(north, b["north"] + dlat)
        west, east = min(west, b["west"] - dlon), max(east, b["east"] + dlon)
    cv = payload["split_strategy"].get("block_cv") if "fold" in cols else None
    if cv:
        rows = np.array([b["row"] for b in cv["blocks"]])
        cols_ = np.array([b["col"] for b in cv["blocks"]])
        south = min(south, cv["origin_lat"] + rows.min() * cv["dlat_deg"])
        north = max(north, cv["origin_lat"] + (rows.max() + 1) * cv["dlat_deg"])
        west = min(west, cv["origin_lon"] + cols_.min() * cv["dlon_deg"])
        east = max(east, cv["origin_lon"] + (cols_.max() + 1) * cv["dlon_deg"])
    return south, north, west, east


def map_axes(ax, payload: dict, cols: dict) -> None:
    south, north, west, east = extent(payload, cols)
    mid = 0.5 * (south + north)
    pad_lat = 0.03 * max(north - south, 1e-3)
    pad_lon = 0.03 * max(east - west, 1e-3)
    ax.set_xlim(west - pad_lon, east + pad_lon)
    ax.set_ylim(south - pad_lat, north + 2.5 * pad_lat)  # room for the region labels
    ax.set_aspect(1.0 / math.cos(math.radians(mid)))  # equal km in both directions
    ax.set_xlabel("longitude (°E)")
    ax.set_ylabel("latitude (°N)")
    ax.grid(True, color="#BBBBBB", lw=0.5, alpha=0.6)
    scale_bar(ax, cols["lat"], cols["lon"])


def year_histogram(ax, years: np.ndarray, groups: list[tuple[str, np.ndarray, str]]) -> None:
    valid = years >= 0
    all_years = (
        np.arange(years[valid].min(), years[valid].max() + 1) if valid.any() else np.zeros(0, np.int64)
    )
    bottom = np.zeros(len(all_years))
    for label, mask, color in groups:
        if not mask.any():
            continue
        counts = np.array([int(((years == y) & mask).sum()) for y in all_years])
        ax.bar(all_years, counts, bottom=bottom, color=color, label=label, width=0.85)
        bottom += counts
    ax.set_xlabel("year")
    ax.set_ylabel("observations")
    ax.set_title("Observations per year", fontsize=12)
    if len(all_years):
        step = max(1, int(math.ceil(len(all_years) / 8)))
        ax.set_xticks(all_years[::step])
    ax.legend(fontsize=9, frameon=False, loc="upper left")
    ax.grid(True, axis="y", color="#DDDDDD", lw=0.5)
    ax.spines[["top", "right"]].set_visible(False)
