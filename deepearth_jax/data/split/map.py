"""The split map: a PNG that shows where and when a split's train, test and excluded observations are.

Holdout: every observation coloured by reason (train, temporal test, spatial test, buffer-excluded), region
boxes labelled with their counts, buffer rings, a km scale bar and a lat/lon grid; beside it a year histogram
stacked by split and the count of each reason. Block CV: observations coloured by fold, the block grid with
each block's fold, and per-fold train/test/excluded counts. Drawn with matplotlib's Agg backend (no display).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepearth_jax.data.split import map_draw as draw
from deepearth_jax.data.split.reasons import Kind, of_kind, parse_all
from deepearth_jax.errors import SplitError


def _columns(payload: dict) -> dict[str, np.ndarray]:
    entries = list(payload["observation_mappings"].values())
    cols = {
        "lat": np.fromiter((e["latitude"] for e in entries), np.float64, len(entries)),
        "lon": np.fromiter((e["longitude"] for e in entries), np.float64, len(entries)),
        "year": np.fromiter(
            (e["year"] if e["year"] is not None else -1 for e in entries), np.int64, len(entries)
        ),
        "split": np.asarray([e["split"] for e in entries], dtype=object),
        "reason": parse_all(e["split_reason"] for e in entries),
    }
    if entries and "fold" in entries[0]:
        cols["fold"] = np.fromiter((e["fold"] for e in entries), np.int64, len(entries))
    return cols


def _holdout_masks(cols: dict) -> dict[str, np.ndarray]:
    reason = cols["reason"]
    return {
        "train": cols["split"] == "train",
        "temporal": of_kind(reason, Kind.TEMPORAL_TEST),
        "spatial": of_kind(reason, Kind.SPATIAL_TEST),
        "excluded": cols["split"] == "excluded",
        "validation_temporal": of_kind(reason, Kind.VALIDATION_TEMPORAL),
        "validation_spatial": of_kind(reason, Kind.VALIDATION_SPATIAL),
    }


def _holdout_map(ax, payload: dict, cols: dict, masks: dict) -> None:
    """The holdout map: points by reason, region boxes and buffer rings, legend, leakage distance."""
    layers = [
        ("train", draw.TRAIN_COLOR, 5, 0.45, "o", "train"),
        ("excluded", draw.EXCLUDED_COLOR, 9, 0.8, "x", "excluded by buffer"),
        ("temporal", draw.TEMPORAL_COLOR, 8, 0.75, "o", "temporal test"),
        ("spatial", draw.SPATIAL_COLOR, 12, 0.9, "o", "spatial test"),
        ("validation_temporal", draw.VALIDATION_TEMPORAL_COLOR, 7, 0.75, "o", "validation: temporal"),
        ("validation_spatial", draw.VALIDATION_COLOR, 10, 0.9, "o", "validation: spatial"),
    ]
    for key, color, size, alpha, marker, label in layers:
        mask = masks[key]
        if mask.any() or key in ("train", "temporal", "spatial"):
            kwargs = {"linewidths": 0.6} if marker == "x" else {"edgecolors": "none"}
            ax.scatter(
                cols["lon"][mask],
                cols["lat"][mask],
                s=size,
                c=color,
                alpha=alpha,
                marker=marker,
                label=f"{label} ({int(mask.sum())})",
                zorder=4 if key == "spatial" else 3,
                rasterized=True,
                **kwargs,
            )
    draw.draw_regions(ax, payload, cols, faint=False)
    draw.draw_regions(ax, payload, cols, faint=False, validation=True)
    draw.map_axes(ax, payload, cols)
    from matplotlib.lines import Line2D

    handles, _ = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color=draw.REGION_COLOR, lw=2.2, label="test region box (Rk: count)"))
    if payload.get("validation_regions"):
        handles.append(
            Line2D([], [], color=draw.VALIDATION_COLOR, lw=2.2, label="validation region box (Vk: count)")
        )
    buffer_km = draw.buffer_km_of(payload)
    if buffer_km > 0:
        handles.append(
            Line2D([], [], color=draw.REGION_COLOR, lw=1.2, ls="--", label=f"buffer {buffer_km:g} km")
        )
    draw.legend_below(ax, handles)
    near = payload.get("split_statistics", {}).get("nearest_train_distance_km", {}).get("spatial_test", {})
    if near.get("count"):
        ax.set_title(
            f"Nearest training observation to a spatial test point: median {near['median_km']:.2f} km, "
            f"5th percentile {near['p5_km']:.2f} km",
            fontsize=10,
        )


def _reason_bars(bars, payload: dict, cols: dict, masks: dict) -> None:
    """Horizontal bars: observations per reason (train, temporal test, each region and its buffer)."""
    names = ["train", "temporal test"]
    counts = [int(masks["train"].sum()), int(masks["temporal"].sum())]
    colors = [draw.TRAIN_COLOR, draw.TEMPORAL_COLOR]
    buffer_km = draw.buffer_km_of(payload)
    for region in payload["test_spatial_regions"]:
        k = region["region_id"]
        names.append(f"region R{k}")
        counts.append(int(of_kind(cols["reason"], Kind.SPATIAL_TEST, int(k)).sum()))
        colors.append(draw.SPATIAL_COLOR)
        if buffer_km > 0:
            names.append(f"buffer R{k}")
            counts.append(int(of_kind(cols["reason"], Kind.BUFFER, int(k)).sum()))
            colors.append(draw.EXCLUDED_COLOR)
    if masks["validation_temporal"].any() or payload.get("validation_regions"):
        names.append("validation year(s)")
        counts.append(int(masks["validation_temporal"].sum()))
        colors.append(draw.VALIDATION_TEMPORAL_COLOR)
    for region in payload.get("validation_regions", []):
        k = int(region["region_id"])
        names.append(f"validation V{k}")
        counts.append(int(of_kind(cols["reason"], Kind.VALIDATION_SPATIAL, k).sum()))
        colors.append(draw.VALIDATION_COLOR)
        if buffer_km > 0:
            names.append(f"buffer V{k}")
            counts.append(int(of_kind(cols["reason"], Kind.VALIDATION_BUFFER, k).sum()))
            colors.append(draw.EXCLUDED_COLOR)
    y = np.arange(len(names))[::-1]
    bars.barh(y, counts, color=colors)
    bars.set_yticks(y, names, fontsize=9)
    for yi, c in zip(y, counts, strict=True):
        bars.text(c, yi, f" {c}", va="center", fontsize=8)
    bars.set_xlabel("observations")
    bars.set_xscale("symlog", linthresh=10)
    stats = payload.get("split_statistics", {})
    unseen = stats.get("unseen_test_species", {}).get("count")
    bars.set_title(
        f"Observations per reason ({stats.get('unique_species_train', '?')} train species, "
        f"{unseen if unseen is not None else '?'} test species never seen in training)",
        fontsize=10,
    )
    bars.spines[["top", "right"]].set_visible(False)


def _holdout(fig, gs, payload: dict, cols: dict) -> None:
    """The holdout view: the map, a year histogram stacked by split, and the count of each reason."""
    masks = _holdout_masks(cols)
    _holdout_map(fig.add_subplot(gs[:, 0]), payload, cols, masks)
    draw.year_histogram(
        fig.add_subplot(gs[0, 1]),
        cols["year"],
        [
            ("train", masks["train"], draw.TRAIN_COLOR),
            ("test: temporal", masks["temporal"], draw.TEMPORAL_COLOR),
            ("test: spatial", masks["spatial"], draw.SPATIAL_COLOR),
            ("excluded", masks["excluded"], draw.EXCLUDED_COLOR),
            ("validation: temporal", masks["validation_temporal"], draw.VALIDATION_TEMPORAL_COLOR),
            ("validation: spatial", masks["validation_spatial"], draw.VALIDATION_COLOR),
        ],
    )
    _reason_bars(fig.add_subplot(gs[1, 1]), payload, cols, masks)


def _blocks(ax, cv: dict, colors: list[str]) -> None:
    """Each block of the grid, tinted by its fold and labelled with it."""
    from matplotlib.patches import Rectangle

    for block in cv["blocks"]:
        south = cv["origin_lat"] + block["row"] * cv["dlat_deg"]
        west = cv["origin_lon"] + block["col"] * cv["dlon_deg"]
        color = colors[block["fold"]]
        ax.add_patch(
            Rectangle(
                (west, south),
                cv["dlon_deg"],
                cv["dlat_deg"],
                facecolor=color,
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
            color=color,
            zorder=4,  # above the points, so dense blocks still show their fold
            bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": color, "pad": 1.5, "lw": 0.6},
        )


def _fold_map(ax, payload: dict, cols: dict, colors: list[str]) -> None:
    """The block-CV map: points by fold, the block grid with each block's fold, the holdout regions."""
    cv = payload["split_strategy"]["block_cv"]
    for k, color in enumerate(colors):
        mask = cols["fold"] == k
        ax.scatter(
            cols["lon"][mask],
            cols["lat"][mask],
            s=6,
            c=color,
            alpha=0.7,
            edgecolors="none",
            label=f"fold {k} ({int(mask.sum())})",
            zorder=3,
            rasterized=True,
        )
    _blocks(ax, cv, colors)
    draw.draw_regions(ax, payload, cols, faint=True)
    draw.map_axes(ax, payload, cols)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    handles, _ = ax.get_legend_handles_labels()
    handles.append(
        Rectangle(
            (0, 0), 1, 1, facecolor="none", edgecolor="#555555", label=f"block {cv['block_km']:g} km: fold"
        )
    )
    if payload["test_spatial_regions"]:
        handles.append(Line2D([], [], color="black", lw=1.0, ls="--", label="holdout test regions (Rk)"))
    draw.legend_below(ax, handles)
    ax.set_title(
        f"Blocks of {cv['block_km']:g} km in {len(colors)} folds; for fold k, training excludes points "
        f"within {cv['buffer_km']:g} km of fold k's blocks",
        fontsize=10,
    )


def _fold_bars(bars, payload: dict, cols: dict, k_folds: int) -> None:
    """Stacked bars: train, excluded and test counts when fold k is the test set."""
    fold = cols["fold"]
    per_fold = payload.get("split_statistics", {}).get("block_cv", {}).get("per_fold", {})
    x = np.arange(k_folds)
    test = np.array(
        [per_fold.get(str(k), {}).get("test_count", int((fold == k).sum())) for k in range(k_folds)]
    )
    train = np.array([per_fold.get(str(k), {}).get("train_count", 0) for k in range(k_folds)])
    excl = np.array([per_fold.get(str(k), {}).get("excluded_count", 0) for k in range(k_folds)])
    bars.bar(x, train, color=draw.TRAIN_COLOR, label="train")
    bars.bar(x, excl, bottom=train, color=draw.EXCLUDED_COLOR, label="excluded (buffer)")
    bars.bar(x, test, bottom=train + excl, color=draw.TEMPORAL_COLOR, label="test (the fold)")
    for xi, t in zip(x, test, strict=True):
        bars.text(xi, train[xi] + excl[xi] + t, f"{t}", ha="center", va="bottom", fontsize=8)
    bars.set_xticks(x, [f"fold {k}" for k in range(k_folds)], fontsize=9)
    bars.set_ylabel("observations")
    bars.set_title("When fold k is the test set", fontsize=12)
    bars.legend(fontsize=9, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)
    bars.spines[["top", "right"]].set_visible(False)


def _folds(fig, gs, payload: dict, cols: dict) -> None:
    """The block-CV view: the map by fold, a year histogram stacked by fold, per-fold counts."""
    k_folds = int(payload["split_strategy"]["block_cv"]["num_folds"])
    colors = [draw.FOLD_COLORS[k % len(draw.FOLD_COLORS)] for k in range(k_folds)]
    _fold_map(fig.add_subplot(gs[:, 0]), payload, cols, colors)
    hist = fig.add_subplot(gs[0, 1])
    draw.year_histogram(
        hist, cols["year"], [(f"fold {k}", cols["fold"] == k, colors[k]) for k in range(k_folds)]
    )
    hist.set_title("Observations per year, stacked by fold", fontsize=12)
    _fold_bars(fig.add_subplot(gs[1, 1]), payload, cols, k_folds)


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
        raise SplitError("the split has no observations to draw")
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
            f"train {stats.get('train_count', '?')}, validation {stats.get('validation_count', 0)}, "
            f"test {stats.get('test_count', '?')} "
            f"(test years {', '.join(map(str, years)) or 'none'}, "
            f"{len(payload['test_spatial_regions'])} regions), excluded {stats.get('excluded_count', 0)}"
        )
    fig.suptitle(title, fontsize=14, fontweight="bold", y=0.97)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
