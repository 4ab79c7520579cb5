"""The split map: a PNG that shows where and when a split's train, test and excluded observations are.

Holdout: every observation coloured by reason (train, temporal test, spatial test, buffer-excluded), region
boxes labelled with their counts, buffer rings, a km scale bar and a lat/lon grid; beside it a year histogram
stacked by split and the count of each reason. Block CV: observations coloured by fold, the block grid with
each block's fold, and per-fold train/test/excluded counts. Drawn with matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from deepearth_jax.data import geo

TRAIN_COLOR = "#2E86AB"
TEMPORAL_COLOR = "#A23B72"
SPATIAL_COLOR = "#E4572E"
REGION_COLOR = "#F18F01"
EXCLUDED_COLOR = "#8C8C8C"
FOLD_COLORS = (
    "#1F77B4 #FF7F0E #2CA02C #D62728 #9467BD #8C564B #E377C2 #17BECF #BCBD22 #7F7F7F "
    "#393B79 #637939 #8C6D31 #843C39 #7B4173 #3182BD #E6550D #31A354 #756BB1 #636363"
).split()


def _legend_below(ax, handles) -> None:
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


def _columns(payload: dict) -> dict[str, np.ndarray]:
    entries = list(payload["observation_mappings"].values())
    cols = {
        "lat": np.fromiter((e["latitude"] for e in entries), np.float64, len(entries)),
        "lon": np.fromiter((e["longitude"] for e in entries), np.float64, len(entries)),
        "year": np.fromiter(
            (e["year"] if e["year"] is not None else -1 for e in entries), np.int64, len(entries)
        ),
        "split": np.asarray([e["split"] for e in entries], dtype=object),
        "reason": np.asarray([e["split_reason"] for e in entries], dtype=object),
    }
    if entries and "fold" in entries[0]:
        cols["fold"] = np.fromiter((e["fold"] for e in entries), np.int64, len(entries))
    return cols


def _nice_km(width_km: float) -> float:
    """A round scale-bar length, about a fifth of the map width."""
    target = width_km / 5
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000):
        if step >= target:
            return float(step)
    return float(10 ** math.ceil(math.log10(target)))


def _scale_bar(ax, lat: np.ndarray, lon: np.ndarray) -> None:
    south, north, west, east = lat.min(), lat.max(), lon.min(), lon.max()
    mid = 0.5 * (south + north)
    width_km = float(geo.geodesic_km(mid, west, mid, east))
    km = _nice_km(max(width_km, 1e-3))
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


def _buffer_ring(bounds: dict, buffer_km: float, n: int = 16) -> tuple[np.ndarray, np.ndarray]:
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


def _draw_regions(ax, payload: dict, cols: dict, faint: bool) -> None:
    from matplotlib.patches import Rectangle

    buffer_km = float(payload["split_strategy"].get("spatial_split", {}).get("buffer_km", 0.0) or 0.0)
    lat_span = cols["lat"].max() - cols["lat"].min()
    for region in payload["test_spatial_regions"]:
        b = region["bounds"]
        width, height = b["east"] - b["west"], b["north"] - b["south"]
        if not faint:
            ax.add_patch(
                Rectangle(
                    (b["west"], b["south"]), width, height, facecolor=REGION_COLOR, alpha=0.15, zorder=1
                )
            )
        ax.add_patch(
            Rectangle(
                (b["west"], b["south"]),
                width,
                height,
                fill=False,
                edgecolor="black" if faint else REGION_COLOR,
                lw=1.0 if faint else 2.2,
                ls="--" if faint else "-",
                zorder=5,
            )
        )
        if buffer_km > 0 and not faint:
            xs, ys = _buffer_ring(b, buffer_km)
            ax.plot(xs, ys, color=REGION_COLOR, lw=1.2, ls="--", zorder=5)
        count = int((cols["reason"] == f"spatial_test_region_{region['region_id']}").sum())
        top = b["north"] + (
            geo.degrees_for_km(buffer_km, b["north"])[0] if buffer_km > 0 and not faint else 0
        )
        ax.text(
            0.5 * (b["west"] + b["east"]),
            top + 0.008 * lat_span,
            f"R{region['region_id']}" if faint else f"R{region['region_id']} ({count})",
            ha="center",
            va="bottom",
            fontsize=9 if faint else 11,
            fontweight="bold",
            color="black" if faint else "#8A4B00",
            zorder=7,
            bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1},
        )


def _extent(payload: dict, cols: dict) -> tuple[float, float, float, float]:
    """`(south, north, west, east)` covering the points, region boxes and their buffer rings."""
    south, north = float(cols["lat"].min()), float(cols["lat"].max())
    west, east = float(cols["lon"].min()), float(cols["lon"].max())
    buffer_km = float(payload["split_strategy"].get("spatial_split", {}).get("buffer_km", 0.0) or 0.0)
    for region in payload["test_spatial_regions"]:
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


def _map_axes(ax, payload: dict, cols: dict) -> None:
    south, north, west, east = _extent(payload, cols)
    mid = 0.5 * (south + north)
    pad_lat = 0.03 * max(north - south, 1e-3)
    pad_lon = 0.03 * max(east - west, 1e-3)
    ax.set_xlim(west - pad_lon, east + pad_lon)
    ax.set_ylim(south - pad_lat, north + 2.5 * pad_lat)  # room for the region labels
    ax.set_aspect(1.0 / math.cos(math.radians(mid)))  # equal km in both directions
    ax.set_xlabel("longitude (°E)")
    ax.set_ylabel("latitude (°N)")
    ax.grid(True, color="#BBBBBB", lw=0.5, alpha=0.6)
    _scale_bar(ax, cols["lat"], cols["lon"])


def _year_histogram(ax, years: np.ndarray, groups: list[tuple[str, np.ndarray, str]]) -> None:
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


def _holdout(fig, gs, payload: dict, cols: dict) -> None:
    ax = fig.add_subplot(gs[:, 0])
    reason = cols["reason"].astype(str)
    train = cols["split"] == "train"
    temporal = reason == "temporal_test"
    spatial = np.char.startswith(reason, "spatial_test_region_")
    excluded = cols["split"] == "excluded"
    stats = payload.get("split_statistics", {})
    layers = [
        (train, TRAIN_COLOR, 5, 0.45, "o", f"train ({int(train.sum())})"),
        (excluded, EXCLUDED_COLOR, 9, 0.8, "x", f"excluded by buffer ({int(excluded.sum())})"),
        (temporal, TEMPORAL_COLOR, 8, 0.75, "o", f"temporal test ({int(temporal.sum())})"),
        (spatial, SPATIAL_COLOR, 12, 0.9, "o", f"spatial test ({int(spatial.sum())})"),
    ]
    for mask, color, size, alpha, marker, label in layers:
        if mask.any() or label.startswith(("train", "temporal", "spatial")):
            kwargs = {"linewidths": 0.6} if marker == "x" else {"edgecolors": "none"}
            ax.scatter(
                cols["lon"][mask],
                cols["lat"][mask],
                s=size,
                c=color,
                alpha=alpha,
                marker=marker,
                label=label,
                zorder=3 if mask is not spatial else 4,
                rasterized=True,
                **kwargs,
            )
    _draw_regions(ax, payload, cols, faint=False)
    _map_axes(ax, payload, cols)
    from matplotlib.lines import Line2D

    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color=REGION_COLOR, lw=2.2, label="test region box (Rk: count)"))
    buffer_km = float(payload["split_strategy"].get("spatial_split", {}).get("buffer_km", 0.0) or 0.0)
    if buffer_km > 0:
        handles.append(Line2D([], [], color=REGION_COLOR, lw=1.2, ls="--", label=f"buffer {buffer_km:g} km"))
    _legend_below(ax, handles)
    near = stats.get("nearest_train_distance_km", {}).get("spatial_test", {})
    if near.get("count"):
        ax.set_title(
            f"Nearest training observation to a spatial test point: median {near['median_km']:.2f} km, "
            f"5th percentile {near['p5_km']:.2f} km",
            fontsize=10,
        )

    hist = fig.add_subplot(gs[0, 1])
    _year_histogram(
        hist,
        cols["year"],
        [
            ("train", train, TRAIN_COLOR),
            ("test: temporal", temporal, TEMPORAL_COLOR),
            ("test: spatial", spatial, SPATIAL_COLOR),
            ("excluded", excluded, EXCLUDED_COLOR),
        ],
    )
    bars = fig.add_subplot(gs[1, 1])
    names, counts, colors = [], [], []
    names.append("train")
    counts.append(int(train.sum()))
    colors.append(TRAIN_COLOR)
    names.append("temporal test")
    counts.append(int(temporal.sum()))
    colors.append(TEMPORAL_COLOR)
    for region in payload["test_spatial_regions"]:
        k = region["region_id"]
        names.append(f"region R{k}")
        counts.append(int((reason == f"spatial_test_region_{k}").sum()))
        colors.append(SPATIAL_COLOR)
        if buffer_km > 0:
            names.append(f"buffer R{k}")
            counts.append(int((reason == f"buffer_region_{k}").sum()))
            colors.append(EXCLUDED_COLOR)
    y = np.arange(len(names))[::-1]
    bars.barh(y, counts, color=colors)
    bars.set_yticks(y, names, fontsize=9)
    for yi, c in zip(y, counts, strict=True):
        bars.text(c, yi, f" {c}", va="center", fontsize=8)
    bars.set_xlabel("observations")
    bars.set_xscale("symlog", linthresh=10)
    unseen = stats.get("unseen_test_species", {}).get("count")
    bars.set_title(
        f"Observations per reason ({stats.get('unique_species_train', '?')} train species, "
        f"{unseen if unseen is not None else '?'} test species never seen in training)",
        fontsize=10,
    )
    bars.spines[["top", "right"]].set_visible(False)


def _folds(fig, gs, payload: dict, cols: dict) -> None:
    cv = payload["split_strategy"]["block_cv"]
    fold = cols["fold"]
    k_folds = int(cv["num_folds"])
    colors = [FOLD_COLORS[k % len(FOLD_COLORS)] for k in range(k_folds)]
    ax = fig.add_subplot(gs[:, 0])
    for k in range(k_folds):
        mask = fold == k
        ax.scatter(
            cols["lon"][mask],
            cols["lat"][mask],
            s=6,
            c=colors[k],
            alpha=0.7,
            edgecolors="none",
            label=f"fold {k} ({int(mask.sum())})",
            zorder=3,
            rasterized=True,
        )
    from matplotlib.patches import Rectangle

    lat_span = cols["lat"].max() - cols["lat"].min()
    for block in cv["blocks"]:
        south = cv["origin_lat"] + block["row"] * cv["dlat_deg"]
        west = cv["origin_lon"] + block["col"] * cv["dlon_deg"]
        ax.add_patch(
            Rectangle(
                (west, south),
                cv["dlon_deg"],
                cv["dlat_deg"],
                facecolor=colors[block["fold"]],
                alpha=0.10,
                edgecolor="#555555",
                lw=0.8,
                zorder=1,
            )
        )
        ax.text(
            west + 0.5 * cv["dlon_deg"],
            south + 0.5 * cv["dlat_deg"],
            str(block["fold"]),
            ha="center",
            va="center",
            fontsize=10,
            fontweight="bold",
            color=colors[block["fold"]],
            zorder=4,  # above the points, so dense blocks still show their fold
            bbox={
                "facecolor": "white",
                "alpha": 0.7,
                "edgecolor": colors[block["fold"]],
                "pad": 1.5,
                "lw": 0.6,
            },
        )
    _draw_regions(ax, payload, cols, faint=True)
    _map_axes(ax, payload, cols)
    del lat_span
    from matplotlib.lines import Line2D

    handles, _ = ax.get_legend_handles_labels()
    handles.append(
        Rectangle(
            (0, 0), 1, 1, facecolor="none", edgecolor="#555555", label=f"block {cv['block_km']:g} km: fold"
        )
    )
    if payload["test_spatial_regions"]:
        handles.append(Line2D([], [], color="black", lw=1.0, ls="--", label="holdout test regions (Rk)"))
    _legend_below(ax, handles)
    ax.set_title(
        f"Blocks of {cv['block_km']:g} km in {k_folds} folds; for fold k, training excludes points within "
        f"{cv['buffer_km']:g} km of fold k's blocks",
        fontsize=10,
    )

    hist = fig.add_subplot(gs[0, 1])
    _year_histogram(hist, cols["year"], [(f"fold {k}", fold == k, colors[k]) for k in range(k_folds)])
    hist.set_title("Observations per year, stacked by fold", fontsize=12)
    bars = fig.add_subplot(gs[1, 1])
    per_fold = payload.get("split_statistics", {}).get("block_cv", {}).get("per_fold", {})
    x = np.arange(k_folds)
    test = np.array(
        [per_fold.get(str(k), {}).get("test_count", int((fold == k).sum())) for k in range(k_folds)]
    )
    train = np.array([per_fold.get(str(k), {}).get("train_count", 0) for k in range(k_folds)])
    excl = np.array([per_fold.get(str(k), {}).get("excluded_count", 0) for k in range(k_folds)])
    bars.bar(x, train, color=TRAIN_COLOR, label="train")
    bars.bar(x, excl, bottom=train, color=EXCLUDED_COLOR, label="excluded (buffer)")
    bars.bar(x, test, bottom=train + excl, color=TEMPORAL_COLOR, label="test (the fold)")
    for xi, t in zip(x, test, strict=True):
        bars.text(xi, train[xi] + excl[xi] + t, f"{t}", ha="center", va="bottom", fontsize=8)
    bars.set_xticks(x, [f"fold {k}" for k in range(k_folds)], fontsize=9)
    bars.set_ylabel("observations")
    bars.set_title("When fold k is the test set", fontsize=12)
    bars.legend(fontsize=9, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    bars.spines[["top", "right"]].set_visible(False)


def plot_split(payload: dict, path: str | Path, title: str | None = None) -> Path:
    """Draws the split map of a payload (or a loaded Split) to a PNG at `path`; returns the path.

    With block-CV folds in the payload the map shows the folds; otherwise the holdout split.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if hasattr(payload, "raw"):
        payload = payload.raw
    cols = _columns(payload)
    if len(cols["lat"]) == 0:
        raise ValueError("the split has no observations to draw")
    folds = "fold" in cols and payload["split_strategy"].get("block_cv")
    stats = payload.get("split_statistics", {})
    fig = plt.figure(figsize=(17, 9.5), dpi=110)
    gs = fig.add_gridspec(2, 2, width_ratios=[1.45, 1], height_ratios=[1, 1], hspace=0.32, wspace=0.16)
    if folds:
        _folds(fig, gs, payload, cols)
    else:
        _holdout(fig, gs, payload, cols)
    name = payload.get("dataset_info", {}).get("dataset_name", "")
    years = payload["split_strategy"].get("temporal_split", {}).get("test_years", [])
    if title is None and folds:
        cv = payload["split_strategy"]["block_cv"]
        sizes = np.bincount(cols["fold"], minlength=int(cv["num_folds"]))
        title = (
            f"{name}: spatial block cross-validation — {len(cols['lat'])} observations, "
            f"{cv['num_folds']} folds of {len(cv['blocks'])} blocks of {cv['block_km']:g} km, "
            f"fold sizes {sizes.min()}..{sizes.max()}, "
            f"buffer {cv['buffer_km']:g} km"
        )
    elif title is None:
        title = (
            f"{name}: train/test split — {stats.get('total_observations', len(cols['lat']))} observations; "
            f"train {stats.get('train_count', '?')}, test {stats.get('test_count', '?')} "
            f"(test years {', '.join(map(str, years)) or 'none'}, "
            f"{len(payload['test_spatial_regions'])} regions), excluded {stats.get('excluded_count', 0)}"
        )
    fig.suptitle(title, fontsize=14, fontweight="bold", y=0.97)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
