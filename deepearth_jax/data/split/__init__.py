"""Spatiotemporal train/test splits, spatial block cross-validation, and the split file (DATA.md §3).

Modules: `file_format` (Split, parse/load/write, the original format), `reasons` (the typed split reason),
`options` (parameters, defaults, limits), `pool`, `regions` (test regions, holdout assignment), `validation`
(the validation carve-out, `with_validation` for old files), `folds` (block CV), `stats` (statistics,
summary), `sizing` (bounds on the subsets' shares; default regions fitted to a small pool), `assemble`
(make_split), `map` + `map_draw` (the PNG), `cli` (the `split` subcommand).
docs/SPLITS.md describes the file for users.

The holdout split, as the original `create_train_test_split.py` defined it:

1. Every observation in the pool (those with a vision embedding by default, or all) starts as `train`
   (reason `temporal_train`); those in a test year become `test` (`temporal_test`).
2. Then, region by region in order, every observation inside region k's box becomes `test`
   (`spatial_test_region_<k>`), overriding the temporal reason. Boxes are squares of `region_km` centred on an
   observation, built with 111 km per degree (geo.box_around), edges included.
3. Ours: with `buffer_km` > 0, `temporal_train` observations within `buffer_km` (geodesic) of a region's box
   become `excluded` (`buffer_region_<k>`, k the nearest box), so spatial autocorrelation cannot leak.

Region centres (our objective, deterministic by seed): every pool observation is a candidate centre. Its box
should hold between half and twice a target share of the pool: with `region_share` given that range is a hard
constraint; by default the target is the median over candidates of the share in a box centred on them (a
typical neighbourhood) and the range is a preference (reported, never hidden). A draw visits the candidates in
a seeded random order, those in the share range first, and keeps each one at least `min_distance_km`
(geodesic, WGS84) from the centres kept so far, until `num_regions` are kept. Of `REGION_DRAWS` such draws
the one with the fewest boxes outside the share range, then the largest minimum distance between centres
(spread), wins; if no random draw places every region, one farthest-point draw (which packs best) is tried.
If that fails too, make_split raises a ValueError naming the constraints: a constraint is never relaxed.

Block cross-validation (`folds` > 0): the pool is cut into square blocks of `block_km` (a lat/lon grid from
the pool's south-west corner: `block_km / 111` degrees of latitude by `block_km / (111 cos(lat_ref))` degrees
of longitude, lat_ref the middle of the pool's latitudes), and blocks go whole to K folds, balanced by
observation count: a greedy pass over the blocks in seeded random order puts each block in the smallest
fold, then moves and swaps between the largest and smallest folds shrink the spread. Guarantee (tested): the
largest fold minus the smallest is at most the largest block's count. For fold k: test = fold k; train = the
other folds minus those within `buffer_km` of a fold-k block (excluded). The holdout split is still written
alongside (the same `buffer_km` applies around its regions).

Validation (validation.py): after steps 1-3, the holdout's training rows give a validation set that mirrors
the test: the most recent training year(s) (`validation_temporal`), then regions chosen like the test
regions among training rows >= `min_distance_km` from every test box (`validation_spatial_region_<k>`),
then buffers like the test's (`validation_buffer_region_<k>`, excluded). Test rows are never taken.

The file (format `deepearth_jax.split` v2) is a superset of the original schema: every original key with its
meaning (`dataset_info`, `split_strategy`, `train_spatial_bounds`, `test_spatial_regions`, `split_statistics`,
`observation_mappings` id -> {gbif_id, taxon_id, taxon_name, image_index, split, split_reason, latitude,
longitude, year, month, day}), plus `format`, `split_strategy.spatial_split` details (buffer_km, seed, pool,
selection), `split_strategy.validation` {years, num_regions, region_size_km, min_distance_km, buffer_km,
seed, selection}, `validation_regions` (entries like test_spatial_regions), `split_strategy.block_cv` (grid
and block table) with per-observation `fold` / `fold_buffer`, and diagnostics in `split_statistics`. `split`
is one of train, test, excluded, validation. `load_split` reads v2, v1 (no validation set) and the
original's `central_florida_split.json` as they are; `with_validation(split, store)` gives a file without a
validation set the one make_split would have written (same rule, the file's box size, spacing, buffer, seed).
"""

from deepearth_jax.data.split.assemble import make_split
from deepearth_jax.data.split.file_format import (
    ORIGINAL_KEYS,
    SPLIT_FORMAT,
    SPLIT_VERSION,
    SUBSETS,
    Split,
    load_split,
    parse_split,
    write_split,
)
from deepearth_jax.data.split.folds import balance_blocks, block_grid, block_of, make_folds
from deepearth_jax.data.split.options import DEFAULTS, MAX_FOLDS, MAX_REGIONS, SplitOptions
from deepearth_jax.data.split.reasons import Kind, Reason, reason_group
from deepearth_jax.data.split.regions import assign_reasons, box_counts, choose_regions
from deepearth_jax.data.split.stats import summary
from deepearth_jax.data.split.validation import carve_validation, with_validation

__all__ = [
    "DEFAULTS",
    "MAX_FOLDS",
    "MAX_REGIONS",
    "ORIGINAL_KEYS",
    "SPLIT_FORMAT",
    "SPLIT_VERSION",
    "SUBSETS",
    "Kind",
    "Reason",
    "Split",
    "SplitOptions",
    "assign_reasons",
    "balance_blocks",
    "block_grid",
    "block_of",
    "box_counts",
    "carve_validation",
    "choose_regions",
    "load_split",
    "make_folds",
    "make_split",
    "parse_split",
    "reason_group",
    "summary",
    "with_validation",
    "write_split",
]
