"""Earth4D in JAX: multi-resolution hash grids over space, time and the season (Grid4D decomposition).

A point is five coordinates in [0, 1], columns `(x, y, z, t, doy)`: east, north, elevation, time over the
data's span, and the day of year (periodic: 1 wraps to 0). They come from `Earth4DNormalizer` (below).
Five 3-D grids read them, as in DeepEarth's Earth4D plus a seasonal one:
    xyz (space), xyt, yzt, xzt (the Grid4D space-time planes), and xy-doy (place x season, doy periodic).
The xy-doy grid is our choice for the seasonal axis: phenology depends on where, so the season is crossed
with the place rather than encoded alone; its coarsest levels (a few cells in x, y) act as a regional
season curve. Without elevation (`use_elevation=False`, the default: the DeepEarth data has none) the z axis
is dropped from every grid consistently: xy, xyt, yt, xt, xy-doy.

Per grid and level l (levels 0..L-1), per axis with resolution range (N_min, N_max):
    b = (N_max / N_min) ** (1 / (L - 1)); scale = N_min * b**l - 1; resolution = ceil(scale) + 1
    position = coordinate * scale; corner = floor(position) clamped to resolution - 2, so coordinate 1 is the
    top vertex with weight 1 (never an out-of-range vertex); fraction = position - corner.
    Periodic axis: cells = max(2, round(N_min * b**l)); position = doy * cells; corners wrap modulo cells.
A level is dense (index = sum corner_a * stride_a, strides the running product of resolutions) when the
product of its resolutions fits the table, otherwise hashed: XOR over axes of corner_a * prime_a
(primes 1, 2654435761, 805459861) in uint32, masked to the power-of-two table size, which equals the low bits
of the uint64 formula. Dense levels hold exactly their vertex count. Corner weights: the product over axes of
fraction or 1 - fraction, after smoothstep 3f^2 - 2f^3 when `interpolation="smoothstep"`.
All levels of all grids live in one float32 table `(entries, features)`, initialised U(-1e-4, 1e-4); the
static per-level constants (scales, resolutions, strides, offsets) are computed once in NumPy.
Coordinates are float32 (never float16: the fine levels need every bit); coordinates outside [0, 1] are
clipped to it; a NaN coordinate gives a NaN encoding for that point (visible, never silently zero).
No learned hash probing (the reference's implementation is defective, see shared/EARTH4D.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deepearth_jax.models.config_error import ModelConfigError

X, Y, Z, T, DOY = range(5)
AXIS_NAMES = ("x", "y", "z", "t", "doy")
PRIMES = (1, 2654435761, 805459861)
INTERPOLATIONS = ("linear", "smoothstep")
GRID_AXES = {"xyz": (X, Y, Z), "xyt": (X, Y, T), "yzt": (Y, Z, T), "xzt": (X, Z, T), "xy_doy": (X, Y, DOY)}


@dataclasses.dataclass(frozen=True)
class Earth4DConfig:
    """Sizes of the encoder. Resolutions are (coarsest, finest) cells across the unit axis.

    Defaults suit a ~100 km region over ~15 years: space from ~7 km to ~50 m cells, elevation 4..256 cells,
    time from ~2 years to ~3 days, the season from 4 to 128 cells per year; 2^16 entries per hashed level.
    """

    levels: int = 16
    features: int = 2
    log2_table_size: int = 16
    spatial_resolution: tuple[float, float] = (16.0, 2048.0)
    elevation_resolution: tuple[float, float] = (4.0, 256.0)
    time_resolution: tuple[float, float] = (8.0, 2048.0)
    doy_resolution: tuple[float, float] = (4.0, 128.0)
    use_elevation: bool = False
    interpolation: str = "linear"
    grids: tuple[str, ...] = ()  # a subset of `grid_names` (e.g. ("xy",) for space alone); () = all five

    def __post_init__(self):
        if self.levels < 1 or self.features < 1:
            raise ModelConfigError(f"levels and features must be >= 1, got {self.levels}, {self.features}")
        if not 4 <= self.log2_table_size <= 30:
            raise ModelConfigError(f"log2_table_size must be in [4, 30], got {self.log2_table_size}")
        if self.interpolation not in INTERPOLATIONS:
            raise ModelConfigError(
                f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )
        known = [n if self.use_elevation else n.replace("z", "") for n in GRID_AXES]
        unknown = sorted(set(self.grids) - set(known))
        if unknown:
            raise ModelConfigError(f"unknown Earth4D grids {unknown}; known: {known}")
        for name in ("spatial", "elevation", "time", "doy"):
            low, high = getattr(self, f"{name}_resolution")
            if not 1.0 < low <= high:
                raise ModelConfigError(
                    f"{name}_resolution must satisfy 1 < coarsest <= finest, got {(low, high)}"
                )


DEFAULT_CONFIG = Earth4DConfig()


def as_config(value: Earth4DConfig | Mapping[str, Any] | None) -> Earth4DConfig:
    """An `Earth4DConfig` from itself, a mapping of some of its fields (a ConfigDict: sequences become
    tuples), or None (the defaults). Unknown fields raise ValueError."""
    if value is None:
        return DEFAULT_CONFIG
    if isinstance(value, Earth4DConfig):
        return value
    fields = {f.name for f in dataclasses.fields(Earth4DConfig)}
    unknown = sorted(set(value) - fields)
    if unknown:
        raise ModelConfigError(f"unknown Earth4D config fields {unknown}; known: {sorted(fields)}")
    return Earth4DConfig(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in value.items()})


@dataclasses.dataclass(frozen=True)
class GridLayout:
    """Static constants of one grid, per level `(L, d)` or `(L,)`, as nested tuples (hashable, jit-static)."""

    name: str
    axes: tuple[int, ...]
    periodic: tuple[bool, ...]
    scale: tuple[tuple[float, ...], ...]  # position = coordinate * scale (float32)
    resolution: tuple[tuple[int, ...], ...]  # vertices per axis (periodic: cells, the index wraps)
    stride: tuple[tuple[int, ...], ...]  # dense strides; 0 on hashed levels
    dense: tuple[bool, ...]
    size: tuple[int, ...]  # table entries of the level
    offset: tuple[int, ...]  # first entry of the level in the concatenated table

    @property
    def dim(self) -> int:
        return len(self.axes)

    @property
    def levels(self) -> int:
        return len(self.dense)


def _axis_levels(low: float, high: float, levels: int, periodic: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scale, resolution) per level of one axis, float64 and int64."""
    growth = math.exp((math.log(high) - math.log(low)) / (levels - 1)) if levels > 1 else 1.0
    n = low * growth ** np.arange(levels, dtype=np.float64)
    if periodic:
        cells = np.maximum(2, np.round(n)).astype(np.int64)
        return cells.astype(np.float64), cells
    scale = n - 1.0
    return scale, np.ceil(scale).astype(np.int64) + 1


def grid_names(config: Earth4DConfig, selected: bool = True) -> tuple[str, ...]:
    """The grids' names: xyz, xyt, yzt, xzt, xy_doy (z dropped from each name without elevation), in that
    order; with `selected`, only those of `config.grids` when it names some."""
    names = tuple(GRID_AXES)
    names = names if config.use_elevation else tuple(n.replace("z", "") for n in names)
    if selected and config.grids:
        return tuple(n for n in names if n in config.grids)
    return names


def build_layouts(config: Earth4DConfig) -> tuple[GridLayout, ...]:
    """Every grid's static per-level constants, with offsets into one concatenated table (NumPy, once)."""
    ranges = {
        X: config.spatial_resolution,
        Y: config.spatial_resolution,
        Z: config.elevation_resolution,
        T: config.time_resolution,
        DOY: config.doy_resolution,
    }
    table_size = 1 << config.log2_table_size
    layouts, offset = [], 0
    for name, axes in zip(grid_names(config, selected=False), GRID_AXES.values(), strict=True):
        if config.grids and name not in config.grids:
            continue
        axes = axes if config.use_elevation else tuple(a for a in axes if a != Z)
        periodic = tuple(a == DOY for a in axes)
        per_axis = [_axis_levels(*ranges[a], config.levels, p) for a, p in zip(axes, periodic, strict=True)]
        scale = np.stack([s for s, _ in per_axis], 1)
        resolution = np.stack([r for _, r in per_axis], 1)
        vertices = [math.prod(int(r) for r in row) for row in resolution]  # Python ints: no overflow
        dense = tuple(v <= table_size for v in vertices)
        size = tuple(v if d else table_size for v, d in zip(vertices, dense, strict=True))
        stride = np.zeros_like(resolution)
        for level, is_dense in enumerate(dense):
            if is_dense:  # running product <= table_size <= 2^30: int32-safe
                stride[level] = np.concatenate([[1], np.cumprod(resolution[level, :-1])])
        offsets = offset + np.concatenate([[0], np.cumsum(size[:-1])]).astype(np.int64)
        offset += sum(size)
        layouts.append(
            GridLayout(
                name=name,
                axes=axes,
                periodic=periodic,
                scale=tuple(tuple(float(v) for v in row) for row in scale.astype(np.float32)),
                resolution=tuple(tuple(int(v) for v in row) for row in resolution),
                stride=tuple(tuple(int(v) for v in row) for row in stride),
                dense=dense,
                size=size,
                offset=tuple(int(v) for v in offsets),
            )
        )
    if offset >= 2**31:
        raise ModelConfigError(f"the table would have {offset} entries; more than int32 indices can address")
    return tuple(layouts)


def table_entries(layouts: tuple[GridLayout, ...]) -> int:
    """Rows of the concatenated table."""
    last = layouts[-1]
    return last.offset[-1] + last.size[-1]


def corner_bits(dim: int) -> np.ndarray:
    """(2^dim, dim) int32: bit a of corner c says whether corner c takes the upper vertex on axis a."""
    return ((np.arange(1 << dim)[:, None] >> np.arange(dim)[None, :]) & 1).astype(np.int32)


def _corners(per_axis: jax.Array, combine) -> jax.Array:
    """(B, L, 2^d) from per-axis values (B, L, d, 2) [lower, upper]: corner c combines, over axes a, the
    side given by bit a of c (axis 0 the fastest bit, as `corner_bits`)."""
    out = per_axis[:, :, 0, :]
    for axis in range(1, per_axis.shape[2]):
        out = combine(per_axis[:, :, axis, :, None], out[:, :, None, :]).reshape(*out.shape[:2], -1)
    return out


def grid_indices_and_weights(
    coords: jax.Array, layout: GridLayout, interpolation: str = "linear"
) -> tuple[jax.Array, jax.Array]:
    """Table rows `(B, L, 2^d)` int32 and corner weights `(B, L, 2^d)` float32 of one grid.

    coords: `(B, 5)` float32 in [0, 1] (already clipped and free of NaN). Per-axis vertex terms (stride or
    prime products) are computed once per side and combined into the 2^d corners by outer sums / XORs;
    dense levels (a prefix: resolutions grow with the level) and hashed levels are computed apart.
    """
    scale = np.asarray(layout.scale, np.float32)  # (L, d)
    resolution = np.asarray(layout.resolution, np.int32)
    periodic = np.asarray(layout.periodic)
    position = coords[:, None, list(layout.axes)] * scale  # (B, L, d)
    lower = jnp.floor(position)
    # Non-periodic: the top edge belongs to the last cell (fraction 1), never to a vertex past the grid.
    top = np.where(periodic, np.float32(np.inf), resolution - 2).astype(np.float32)
    lower = jnp.minimum(lower, top)
    fraction = position - lower
    if interpolation == "smoothstep":
        fraction = fraction * fraction * (3.0 - 2.0 * fraction)
    weight = _corners(jnp.stack([1.0 - fraction, fraction], -1), jnp.multiply)
    vertex = lower.astype(jnp.int32)[..., None] + np.array([0, 1], np.int32)  # (B, L, d, 2)
    if periodic.any():
        vertex = jnp.where(periodic[:, None], vertex % np.maximum(resolution, 1)[..., None], vertex)
    n_dense = sum(layout.dense)
    if any(layout.dense[n_dense:]):
        raise ValueError(f"grid {layout.name}: dense levels must precede hashed ones, got {layout.dense}")
    parts = []
    if n_dense:
        stride = np.asarray(layout.stride, np.int32)[:n_dense, :, None]
        parts.append(_corners(vertex[:, :n_dense] * stride, jnp.add))
    if n_dense < layout.levels:
        primes = np.asarray(PRIMES[: layout.dim], np.uint32)[:, None]
        hashed = _corners(vertex[:, n_dense:].astype(jnp.uint32) * primes, jnp.bitwise_xor)
        mask = np.asarray(layout.size[n_dense:], np.uint32) - np.uint32(1)  # powers of two
        parts.append((hashed & mask[:, None]).astype(jnp.int32))
    index = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)
    return index + np.asarray(layout.offset, np.int32)[:, None], weight


def _gather_rows(table: jax.Array, index: jax.Array) -> jax.Array:
    """table[index] (B, K, F); under explicit mesh axes the output keeps the index's batch sharding (a
    gather of batch-sharded indices from a replicated table is otherwise ambiguous)."""
    sharding = jax.typeof(index).sharding
    spec = tuple(getattr(sharding, "spec", ()) or ())
    if any(axis is not None for axis in spec):
        out = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec, None))
        return table.at[index].get(mode="promise_in_bounds", out_sharding=out)
    return table.at[index].get(mode="promise_in_bounds")


def encode(
    table: jax.Array, coords: jax.Array, layouts: tuple[GridLayout, ...], interpolation: str = "linear"
) -> jax.Array:
    """The encoding `(B, G * L * F)` float32 of coords `(B, 5)`: per grid, per level, F interpolated features.

    One gather over all grids and levels at once; its gradient is a scatter-add into the table.
    """
    coords = jnp.asarray(coords, jnp.float32)
    invalid = jnp.any(jnp.isnan(coords), axis=-1)
    coords = jnp.clip(jnp.where(jnp.isnan(coords), 0.0, coords), 0.0, 1.0)
    batch, features = coords.shape[0], table.shape[-1]
    pieces = [grid_indices_and_weights(coords, layout, interpolation) for layout in layouts]
    index = jnp.concatenate([i.reshape(batch, -1) for i, _ in pieces], axis=1)
    weight = jnp.concatenate([w.reshape(batch, -1) for _, w in pieces], axis=1)
    rows = _gather_rows(table, index)  # (B, K, F); indices in range by construction
    weighted = rows * weight[..., None]
    outputs, start = [], 0
    for layout in layouts:
        corners = 1 << layout.dim
        width = layout.levels * corners
        block = weighted[:, start : start + width].reshape(batch, layout.levels, corners, features)
        outputs.append(jnp.sum(block, axis=2).reshape(batch, -1))
        start += width
    out = jnp.concatenate(outputs, axis=1)
    return jnp.where(invalid[:, None], jnp.nan, out)


def table_init(key: jax.Array, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
    """U(-1e-4, 1e-4), Instant-NGP's table initialisation."""
    return jax.random.uniform(key, shape, dtype, minval=-1e-4, maxval=1e-4)


class Earth4D(nnx.Module):
    """The encoder: coords `(B, 5)` float32 in [0, 1] (x, y, z, t, doy) -> features `(B, output_dim)` float32.

    `output_dim` = grids (5, or those of `config.grids`) * `config.levels` * `config.features`. The table is
    one `nnx.Param` `(entries, features)` float32.
    """

    def __init__(self, config: Earth4DConfig | Mapping[str, Any] | None = None, *, rngs: nnx.Rngs):
        config = self.config = as_config(config)
        self.layouts = build_layouts(config)
        entries = table_entries(self.layouts)
        self.table = nnx.Param(table_init(rngs.params(), (entries, config.features)))

    @property
    def output_dim(self) -> int:
        return len(self.layouts) * self.config.levels * self.config.features

    @property
    def num_parameters(self) -> int:
        return int(self.table.shape[0] * self.table.shape[1])

    def __call__(self, coords: jax.Array) -> jax.Array:
        return encode(self.table[...], coords, self.layouts, self.config.interpolation)


# --- coordinates ------------------------------------------------------------------------------------------

KM_PER_DEGREE = 6371.0088 * math.pi / 180.0  # mean Earth radius: km per degree of latitude
SECONDS_PER_DAY = 86400.0


def days_since_epoch(year: jax.Array, month: jax.Array, day: jax.Array) -> jax.Array:
    """Days from 1970-01-01 of a proleptic Gregorian date (int32 arrays; Hinnant's days_from_civil)."""
    year = year - (month <= 2)
    era = jnp.floor_divide(year, 400)
    year_of_era = year - era * 400
    day_of_year = (153 * (month + jnp.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def decimal_days(time: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(days since 1970-01-01, day of year as a fraction of its year in [0, 1)) float32 of `time` `(B, 6)`.

    `time` columns: year, month, day, hour, minute, second (the pipeline's layout). An unknown time of day
    (NaN hour) counts as 12:00 (at most half a day off, finer than the finest default time cell); NaN
    minute or second count as 0. A NaN year, month or day gives NaN.
    """
    time = jnp.asarray(time, jnp.float32)
    date_known = ~jnp.any(jnp.isnan(time[:, :3]), axis=-1)
    year, month, day = (jnp.where(date_known, time[:, i], 1.0).astype(jnp.int32) for i in range(3))
    hour = jnp.where(jnp.isnan(time[:, 3]), 12.0, time[:, 3])
    minute, second = (jnp.nan_to_num(time[:, i]) for i in (4, 5))
    of_day = (hour * 3600.0 + minute * 60.0 + second) / SECONDS_PER_DAY
    days = days_since_epoch(year, month, day)
    year_start = days_since_epoch(year, jnp.ones_like(month), jnp.ones_like(day))
    year_length = days_since_epoch(year + 1, jnp.ones_like(month), jnp.ones_like(day)) - year_start
    doy = ((days - year_start).astype(jnp.float32) + of_day) / year_length.astype(jnp.float32)
    absolute = days.astype(jnp.float32) + of_day
    nan = jnp.float32(jnp.nan)
    return jnp.where(date_known, absolute, nan), jnp.where(date_known, jnp.minimum(doy, 1.0), nan)


@dataclasses.dataclass(frozen=True)
class Earth4DNormalizer:
    """Maps (latitude, longitude, elevation, time) to Earth4D coordinates over one region.

    x, y: kilometre-equal local equirectangular axes about the centre (`lat0`, `lon0`): east and north km
    divided by one common `span_km`, offset to 0.5 at the centre, so a cell is square on the ground.
    z: (elevation - `elevation_min`) / `elevation_span` (0.5 where elevation is NaN or unused).
    t: (days since 1970 - `day0`) / `day_span`. doy: fraction of the calendar year, periodic.
    Build it with `fit` from the training rows; `to_dict` / `from_dict` round-trip it through JSON.
    """

    lat0: float
    lon0: float
    span_km: float
    day0: float
    day_span: float
    elevation_min: float = 0.0
    elevation_span: float = 0.0  # 0: no elevation

    @classmethod
    def fit(
        cls,
        latitude: np.ndarray,
        longitude: np.ndarray,
        time: np.ndarray,
        elevation: np.ndarray | None = None,
        margin: float = 0.1,
    ) -> Earth4DNormalizer:
        """The box of the given points (degrees; `time` `(N, 6)`; elevation metres or None) plus `margin`
        (a fraction of the extent on each side, at least 1 km and 30 days). Raises ValueError on no finite
        points."""
        lat, lon = np.asarray(latitude, np.float64), np.asarray(longitude, np.float64)
        days = np.asarray(jax.jit(decimal_days)(jnp.asarray(time, jnp.float32))[0], np.float64)
        ok = np.isfinite(lat) & np.isfinite(lon) & np.isfinite(days)
        if not ok.any():
            raise ValueError("Earth4DNormalizer.fit: no point with a finite latitude, longitude and date")
        lat, lon, days = lat[ok], lon[ok], days[ok]
        lat0, lon0 = 0.5 * (lat.min() + lat.max()), 0.5 * (lon.min() + lon.max())
        east = (lon - lon0) * KM_PER_DEGREE * math.cos(math.radians(lat0))
        north = (lat - lat0) * KM_PER_DEGREE
        extent = max(np.ptp(east), np.ptp(north))
        span_km = extent + 2 * max(margin * extent, 1.0)
        day_extent = float(np.ptp(days))
        day_pad = max(margin * day_extent, 30.0)
        elevation_min, elevation_span = 0.0, 0.0
        if elevation is not None:
            elev = np.asarray(elevation, np.float64)[ok]
            elev = elev[np.isfinite(elev)]
            if elev.size:
                pad = max(margin * np.ptp(elev), 10.0)
                elevation_min, elevation_span = float(elev.min() - pad), float(np.ptp(elev) + 2 * pad)
        return cls(
            lat0=float(lat0),
            lon0=float(lon0),
            span_km=float(span_km),
            day0=float(days.min() - day_pad),
            day_span=float(day_extent + 2 * day_pad),
            elevation_min=elevation_min,
            elevation_span=elevation_span,
        )

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Earth4DNormalizer:
        return cls(**{f.name: float(values[f.name]) for f in dataclasses.fields(cls) if f.name in values})

    def __call__(self, location: jax.Array, time: jax.Array) -> jax.Array:
        """coords `(B, 5)` float32 of `location` `(B, 3)` (lat, lon degrees, elevation m) and `time` `(B, 6)`.

        Unclipped: points outside the fitted box fall outside [0, 1] (the encoder clips them).
        """
        location = jnp.asarray(location, jnp.float32)
        east_per_degree = KM_PER_DEGREE * math.cos(math.radians(self.lat0)) / self.span_km
        x = (location[:, 1] - self.lon0) * east_per_degree + 0.5
        y = (location[:, 0] - self.lat0) * (KM_PER_DEGREE / self.span_km) + 0.5
        if self.elevation_span > 0:
            z = (location[:, 2] - self.elevation_min) / self.elevation_span
            z = jnp.where(jnp.isnan(z), 0.5, z)
        else:
            z = jnp.full_like(x, 0.5)
        days, doy = decimal_days(time)
        t = (days - self.day0) / self.day_span
        return jnp.stack([x, y, z, t, doy], axis=-1)
