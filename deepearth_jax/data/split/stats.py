"""Split statistics (counts, species, leakage distances; per region, year, reason, fold) and the summary."""

from __future__ import annotations

import numpy as np

from deepearth_jax.data import geo
from deepearth_jax.data.split.file_format import SUBSETS
from deepearth_jax.data.split.folds import fold_masks
from deepearth_jax.data.split.pool import Pool
from deepearth_jax.data.split.reasons import Kind, of_kind, texts


def _quantiles(d: np.ndarray) -> dict:
    if len(d) == 0:
        return {"count": 0, "median_km": None, "p5_km": None, "min_km": None}
    return {
        "count": int(len(d)),
        "median_km": float(np.median(d)),
        "p5_km": float(np.percentile(d, 5)),
        "min_km": float(d.min()),
    }


def _nearest_train(pool: Pool, query: np.ndarray, train: np.ndarray) -> np.ndarray:
    if not query.any() or not train.any():
        return np.zeros(0)
    d, _ = geo.nearest_km(pool.lat[query], pool.lon[query], pool.lat[train], pool.lon[train])
    return d


def statistics(
    pool: Pool,
    split: np.ndarray,
    reason: np.ndarray,
    regions: list[dict],
    years: list[int],
    validation_regions: list[dict] = (),
) -> dict:
    """`split_statistics` of the holdout: counts, species, nearest-train distances, per region/year/reason."""
    n = len(split)
    train, test, excluded = split == "train", split == "test", split == "excluded"
    temporal = of_kind(reason, Kind.TEMPORAL_TEST)
    spatial = of_kind(reason, Kind.SPATIAL_TEST)
    names_train = set(pool.taxon_name[train].tolist())
    names_test = set(pool.taxon_name[test].tolist())
    unseen = sorted(names_test - names_train)
    stats = {
        "total_observations": int(n),
        "train_count": int(train.sum()),
        "test_count": int(test.sum()),
        "train_percentage": float(100 * train.sum() / n),
        "test_percentage": float(100 * test.sum() / n),
        "temporal_test_count": int(temporal.sum()),
        "spatial_test_count": int(spatial.sum()),
        "unique_species_train": len(names_train),
        "unique_species_test": len(names_test),
        "excluded_count": int(excluded.sum()),
        "excluded_percentage": float(100 * excluded.sum() / n),
        "buffer_excluded_count": int(of_kind(reason, Kind.BUFFER).sum()),
        "unseen_test_species": {"count": len(unseen), "names": unseen},
        **_validation_counts(pool, split, reason),
    }
    val_temporal = of_kind(reason, Kind.VALIDATION_TEMPORAL)
    val_spatial = of_kind(reason, Kind.VALIDATION_SPATIAL)
    stats["nearest_train_distance_km"] = {
        "description": "geodesic distance from each test observation to its nearest training observation",
        "spatial_test": _quantiles(_nearest_train(pool, spatial, train)),
        "temporal_test": _quantiles(_nearest_train(pool, temporal, train)),
        "validation_spatial": _quantiles(_nearest_train(pool, val_spatial, train)),
        "validation_temporal": _quantiles(_nearest_train(pool, val_temporal, train)),
    }
    stats["per_region"] = _per_region(pool, reason, regions, years, train)
    stats["per_validation_region"] = {
        str(r["region_id"]): _region_row(
            pool, reason, r, Kind.VALIDATION_SPATIAL, Kind.VALIDATION_BUFFER, train
        )
        for r in validation_regions
    }
    per_year = {}
    for y in np.unique(pool.year):
        at = pool.year == y
        per_year[str(int(y))] = {s: int((at & (split == s)).sum()) for s in SUBSETS}
    stats["per_year"] = per_year
    names, counts = np.unique(texts(reason).astype(str), return_counts=True)
    stats["per_reason"] = {str(r): int(c) for r, c in zip(names, counts, strict=True)}
    return stats


def _validation_counts(pool: Pool, split: np.ndarray, reason: np.ndarray) -> dict:
    validation = split == "validation"
    names_validation = set(pool.taxon_name[validation].tolist())
    unseen = names_validation - set(pool.taxon_name[split == "train"].tolist())
    return {
        "validation_count": int(validation.sum()),
        "validation_percentage": float(100 * validation.sum() / len(split)),
        "validation_temporal_count": int(of_kind(reason, Kind.VALIDATION_TEMPORAL).sum()),
        "validation_spatial_count": int(of_kind(reason, Kind.VALIDATION_SPATIAL).sum()),
        "validation_buffer_excluded_count": int(of_kind(reason, Kind.VALIDATION_BUFFER).sum()),
        "unique_species_validation": len(names_validation),
        "unseen_validation_species": {"count": len(unseen)},
    }


def _region_row(pool: Pool, reason, region: dict, kind: Kind, buffer: Kind, train) -> dict:
    """Counts, species and leakage distance of one validation region."""
    k = int(region["region_id"])
    mine = of_kind(reason, kind, k)
    return {
        "validation_count": int(mine.sum()),
        "buffer_excluded_count": int(of_kind(reason, buffer, k).sum()),
        "species": len(set(pool.taxon_name[mine].tolist())),
        "nearest_train_distance_km": _quantiles(_nearest_train(pool, mine, train)),
    }


def _per_region(pool: Pool, reason, regions: list[dict], years: list[int], train) -> dict:
    per_region = {}
    for region in regions:
        k = region["region_id"]
        mine = of_kind(reason, Kind.SPATIAL_TEST, int(k))
        inside = geo.in_box(pool.lat, pool.lon, region["bounds"])
        per_region[str(k)] = {
            "test_count": int(mine.sum()),
            "in_test_years": int((mine & np.isin(pool.year, years)).sum()),
            "overridden_by_later_region": int((inside & ~mine).sum()),
            "buffer_excluded_count": int(of_kind(reason, Kind.BUFFER, int(k)).sum()),
            "species": len(set(pool.taxon_name[mine].tolist())),
            "nearest_train_distance_km": _quantiles(_nearest_train(pool, mine, train)),
        }
    return per_region


def fold_statistics(pool: Pool, split, reason, fold: np.ndarray, bits: np.ndarray, record: dict) -> dict:
    """`split_statistics.block_cv`: fold counts, balance against its tolerance, per-fold diagnostics."""
    k_folds = record["num_folds"]
    counts = np.bincount(fold, minlength=k_folds)
    largest = max(b["count"] for b in record["blocks"])
    validation_buffer = of_kind(reason, Kind.VALIDATION_BUFFER)
    per_fold = {}
    for k in range(k_folds):
        masks = fold_masks(fold == k, ((bits >> k) & 1) == 1, split, validation_buffer)
        test, train = masks["test"], masks["train"]
        unseen = set(pool.taxon_name[test].tolist()) - set(pool.taxon_name[train].tolist())
        per_fold[str(k)] = {
            "test_count": int(test.sum()),
            "train_count": int(train.sum()),
            "excluded_count": int(masks["excluded"].sum()),
            "validation_count": int(masks["validation"].sum()),
            "blocks": sum(1 for b in record["blocks"] if b["fold"] == k),
            "unseen_test_species": len(unseen),
            "nearest_train_distance_km": _quantiles(_nearest_train(pool, test, train)),
        }
    return {
        "num_folds": k_folds,
        "num_blocks": len(record["blocks"]),
        "fold_counts": counts.tolist(),
        "max_minus_min": int(counts.max() - counts.min()),
        "largest_block_count": int(largest),
        "balance_tolerance": "max - min fold count <= largest block count",
        "balanced_within_tolerance": bool(counts.max() - counts.min() <= largest),
        "per_fold": per_fold,
    }


def summary(payload: dict) -> str:
    """A few lines for the terminal: counts, regions, diagnostics, folds."""
    s = payload["split_statistics"]
    lines = [
        f"pool {s['total_observations']}: train {s['train_count']} ({s['train_percentage']:.1f}%), test "
        f"{s['test_count']} ({s['test_percentage']:.1f}%: {s['temporal_test_count']} temporal + "
        f"{s['spatial_test_count']} spatial), excluded {s['excluded_count']} by buffers",
        f"species: {s['unique_species_train']} train, {s['unique_species_test']} test, "
        f"{s['unseen_test_species']['count']} only in test",
    ]
    sizing = payload["split_strategy"]["spatial_split"].get("sizing", {})
    if sizing.get("fitted"):
        spatial = payload["split_strategy"]["spatial_split"]
        lines.append(
            f"regions fitted to this pool: {spatial['num_test_regions']} of "
            f"{spatial['region_size_km']:g} km, >= {spatial['min_distance_km']:g} km apart (the defaults, "
            f"{sizing['requested']}, gave "
            f"{'; '.join(sizing['requested_problems'])})"
        )
    for r in payload["test_spatial_regions"]:
        lines.append(
            f"  region {r['region_id']}: ({r['center_lat']:.4f}, {r['center_lng']:.4f}) "
            f"{r.get('observation_count', '?')} test observations"
        )
    near = s["nearest_train_distance_km"]["spatial_test"]
    if near["count"]:
        lines.append(
            f"nearest training observation to spatial test points: median {near['median_km']:.2f} km, "
            f"5th percentile {near['p5_km']:.2f} km"
        )
    if "validation_count" in s:
        validation = payload["split_strategy"]["validation"]
        years = ", ".join(map(str, validation["years"])) or "none"
        lines.append(
            f"validation {s['validation_count']} ({s['validation_percentage']:.1f}%, carved from training: "
            f"{s['validation_temporal_count']} in year(s) {years} + "
            f"{s['validation_spatial_count']} in {validation['num_regions']} regions), excluded "
            f"{s['validation_buffer_excluded_count']} by their buffers"
        )
    cv = s.get("block_cv")
    if cv:
        lines.append(
            f"block CV: {cv['num_folds']} folds over {cv['num_blocks']} blocks, counts {cv['fold_counts']} "
            f"(max-min {cv['max_minus_min']} <= largest block {cv['largest_block_count']})"
        )
        for k, f in cv["per_fold"].items():
            d = f["nearest_train_distance_km"]
            lines.append(
                f"  fold {k}: test {f['test_count']}, train {f['train_count']}, "
                f"excluded {f['excluded_count']}, validation {f.get('validation_count', 0)}, "
                f"nearest-train median {d['median_km'] or 0:.2f} km, p5 {d['p5_km'] or 0:.2f} km"
            )
    return "\n".join(lines)
