"""Earth4D encoder: indices, weights, forward and gradient against independent NumPy references
(uint64 hashing, float64 np.add.at), PyTorch parity, sizes, and the coordinate normaliser."""

from __future__ import annotations

import datetime as dt
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import optional_import, test_seed
from flax import nnx

from deepearth_jax.models import earth4d as e4d

# Small enough to be fast, with dense and hashed levels in every grid and a periodic axis that wraps.
SMALL = e4d.Earth4DConfig(
    levels=4,
    features=2,
    log2_table_size=10,
    spatial_resolution=(4.0, 64.0),
    elevation_resolution=(3.0, 16.0),
    time_resolution=(5.0, 40.0),
    doy_resolution=(3.0, 24.0),
    use_elevation=True,
)
PRIMES_U64 = np.array([1, 2654435761, 805459861], np.uint64)


def reference_levels(config: e4d.Earth4DConfig):
    """Per grid: axes, periodic flags and per level (scale f32, resolution, dense, size, offset), recomputed
    from the formulas, independently of `build_layouts`."""
    ranges = [config.spatial_resolution] * 2 + [
        config.elevation_resolution,
        config.time_resolution,
        config.doy_resolution,
    ]
    table = 2**config.log2_table_size
    grids, offset = [], 0
    for axes in e4d.GRID_AXES.values():
        axes = [a for a in axes if config.use_elevation or a != e4d.Z]
        levels = []
        for level in range(config.levels):
            scale, res = [], []
            for a in axes:
                low, high = ranges[a]
                n = low * (high / low) ** (level / (config.levels - 1))
                if a == e4d.DOY:
                    cells = max(2, round(n))
                    scale.append(cells)
                    res.append(cells)
                else:
                    scale.append(n - 1)
                    res.append(math.ceil(n - 1) + 1)
            vertices = math.prod(res)
            dense = vertices <= table
            size = vertices if dense else table
            levels.append((np.float32(scale), res, dense, size, offset))
            offset += size
        grids.append((axes, [a == e4d.DOY for a in axes], levels))
    return grids


def reference_indices_and_weights(coords: np.ndarray, config: e4d.Earth4DConfig, smooth: bool = False):
    """Per grid: (index (B, L, C) int64, weight (B, L, C) float64) with uint64 hashing, loops over levels."""
    out = []
    for axes, periodic, levels in reference_levels(config):
        d = len(axes)
        idx_levels, w_levels = [], []
        for scale, res, dense, size, offset in levels:
            pos = coords[:, axes].astype(np.float32) * scale  # float32, as the encoder
            lower = np.floor(pos).astype(np.int64)
            for a in range(d):
                if not periodic[a]:
                    lower[:, a] = np.minimum(lower[:, a], res[a] - 2)
            frac = (pos - lower).astype(np.float64)
            if smooth:
                frac = frac * frac * (3 - 2 * frac)
            idx_c, w_c = [], []
            for c in range(1 << d):
                bits = [(c >> a) & 1 for a in range(d)]
                corner = (lower + np.array(bits)).astype(np.uint64)
                w = np.ones(len(coords))
                for a in range(d):
                    if periodic[a]:
                        corner[:, a] %= np.uint64(res[a])
                    w *= frac[:, a] if bits[a] else 1 - frac[:, a]
                if dense:
                    stride, index = 1, np.zeros(len(coords), np.uint64)
                    for a in range(d):
                        index += corner[:, a] * np.uint64(stride)
                        stride *= res[a]
                else:
                    index = corner[:, 0] * PRIMES_U64[0]
                    for a in range(1, d):
                        index ^= corner[:, a] * PRIMES_U64[a]  # uint64 products: no wrap at these sizes
                    index %= np.uint64(size)
                idx_c.append(index.astype(np.int64) + offset)
                w_c.append(w)
            idx_levels.append(np.stack(idx_c, -1))
            w_levels.append(np.stack(w_c, -1))
        out.append((np.stack(idx_levels, 1), np.stack(w_levels, 1)))
    return out


def boundary_coords(rng: np.random.Generator, n: int, config: e4d.Earth4DConfig) -> np.ndarray:
    """n points: uniform ones, plus 0, 1 and exact cell edges k / scale of every level on every axis."""
    coords = rng.random((n, 5)).astype(np.float32)
    edges = [np.float32(0.0), np.float32(1.0)]
    for _, _, levels in reference_levels(config):
        for scale, *_ in levels:
            for s in np.atleast_1d(scale):
                k = rng.integers(0, int(s) + 1, 50)
                edges.extend((k / np.float32(s)).astype(np.float32))
    edges = np.clip(np.array(edges, np.float32), 0, 1)
    pick = rng.random((n, 5)) < 0.3
    coords[pick] = rng.choice(edges, pick.sum())
    coords[:5] = 0.0
    coords[5:10] = 1.0
    return coords


@pytest.mark.parametrize("interpolation, points", [("linear", 100_000), ("smoothstep", 10_000)])
def test_indices_and_weights_equal_numpy_uint64_reference(interpolation, points):
    config = e4d.Earth4DConfig(**{**SMALL.__dict__, "interpolation": interpolation})
    layouts = e4d.build_layouts(config)
    assert all(any(layout.dense) and not all(layout.dense) for layout in layouts)  # both kinds tested
    coords = boundary_coords(np.random.default_rng(test_seed()), points, config)
    expected = reference_indices_and_weights(coords, config, smooth=interpolation == "smoothstep")
    fn = jax.jit(lambda c: [e4d.grid_indices_and_weights(c, g, interpolation) for g in layouts])
    for layout, (index, weight), (want_index, want_weight) in zip(
        layouts, fn(jnp.asarray(coords)), expected, strict=True
    ):
        np.testing.assert_array_equal(np.asarray(index), want_index, err_msg=layout.name)
        np.testing.assert_allclose(np.asarray(weight), want_weight, rtol=0, atol=2e-6, err_msg=layout.name)
        for level in range(layout.levels):
            rows = np.asarray(index[:, level])
            assert rows.min() >= layout.offset[level]
            assert rows.max() < layout.offset[level] + layout.size[level]
    # The periodic axis wraps (xy_doy, the last grid): doy near 1 shares vertex 0 with doy 0 at every level.
    near_one = np.full((1, 5), 0.25, np.float32)
    near_one[0, e4d.DOY] = 0.9999
    zero = near_one.copy()
    zero[0, e4d.DOY] = 0.0
    (index, _), (index0, weight0) = (fn(jnp.asarray(c))[-1] for c in (near_one, zero))
    upper = e4d.corner_bits(3)[:, 2] == 1
    lower_rows = np.asarray(index0)[0][:, ~upper]
    np.testing.assert_array_equal(np.asarray(index)[0][:, upper], lower_rows)
    np.testing.assert_allclose(np.asarray(weight0)[0][:, upper], 0.0)


def reference_encode(table: np.ndarray, coords: np.ndarray, config: e4d.Earth4DConfig):
    """(encoding (B, G*L*F) float64, function cotangent -> table gradient via np.add.at)."""
    pieces = reference_indices_and_weights(coords, config, smooth=config.interpolation == "smoothstep")
    table64 = table.astype(np.float64)
    outs = [np.einsum("blc,blcf->blf", w, table64[i]).reshape(len(coords), -1) for i, w in pieces]

    def grad(cotangent: np.ndarray) -> np.ndarray:
        g = np.zeros_like(table64)
        start, features = 0, table.shape[1]
        for i, w in pieces:
            levels = i.shape[1]
            cot = cotangent[:, start : start + levels * features].reshape(len(coords), levels, 1, features)
            np.add.at(g, i.reshape(-1), (w[..., None] * cot).reshape(-1, features))
            start += levels * features
        return g

    return np.concatenate(outs, 1), grad


def test_forward_and_table_gradient_equal_float64_reference():
    rng = np.random.default_rng(test_seed())
    layouts = e4d.build_layouts(SMALL)
    table = rng.uniform(-1, 1, (e4d.table_entries(layouts), SMALL.features)).astype(np.float32)
    coords = boundary_coords(rng, 20_000, SMALL)
    cotangent = rng.standard_normal((len(coords), 5 * SMALL.levels * SMALL.features)).astype(np.float32)
    want, want_grad = reference_encode(table, coords, SMALL)

    def loss(t):
        out = e4d.encode(t, jnp.asarray(coords), layouts)
        return jnp.sum(out * cotangent), out

    (_, out), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(jnp.asarray(table))
    np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(grad), want_grad(cotangent.astype(np.float64)), rtol=1e-5, atol=1e-4
    )


def test_pytorch_implementation_agrees():
    torch = optional_import("torch", "the PyTorch Earth4D reference")
    from deepearth_jax.benchmarks.torch_earth4d import TorchEarth4D

    rng = np.random.default_rng(test_seed())
    config = e4d.Earth4DConfig(**{**SMALL.__dict__, "interpolation": "smoothstep"})
    layouts = e4d.build_layouts(config)
    table = rng.uniform(-1, 1, (e4d.table_entries(layouts), config.features)).astype(np.float32)
    coords = boundary_coords(rng, 20_000, config)
    cotangent = rng.standard_normal((len(coords), 5 * config.levels * config.features)).astype(np.float32)
    reference = TorchEarth4D(layouts, "smoothstep")
    torch_indices = [i for i, _ in reference.indices_and_weights(torch.from_numpy(coords))]
    t_table = torch.from_numpy(table).requires_grad_(True)
    t_out = reference.encode(t_table, torch.from_numpy(coords))
    (t_out * torch.from_numpy(cotangent)).sum().backward()

    @jax.jit
    def jax_side(t, c):
        def loss(t):
            out = e4d.encode(t, c, layouts, "smoothstep")
            return jnp.sum(out * cotangent), out

        (_, out), grad = jax.value_and_grad(loss, has_aux=True)(t)
        return [e4d.grid_indices_and_weights(c, g, "smoothstep")[0] for g in layouts], out, grad

    indices, out, grad = jax_side(jnp.asarray(table), jnp.asarray(coords))
    for index, want in zip(torch_indices, indices, strict=True):
        np.testing.assert_array_equal(index.numpy(), np.asarray(want))
    np.testing.assert_allclose(t_out.detach().numpy(), np.asarray(out), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t_table.grad.numpy(), np.asarray(grad), rtol=1e-5, atol=1e-4)


def test_default_encoder_sizes_and_adam_state_under_100_mb():
    model = e4d.Earth4D(rngs=nnx.Rngs(0))
    assert model.num_parameters <= 8_000_000
    assert model.output_dim == 5 * 16 * 2
    table = np.asarray(model.table[...])
    assert table.dtype == np.float32 and np.abs(table).max() <= 1e-4 and table.std() > 4e-5
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    state = nnx.state(optimizer)
    total = sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes"))
    total += sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))
    assert total < 100e6, total


def test_index_arithmetic_is_int32_safe_at_huge_resolutions():
    config = e4d.Earth4DConfig(
        levels=3, log2_table_size=24, spatial_resolution=(1024.0, 2.0**20), time_resolution=(512.0, 2.0**20)
    )
    layouts = e4d.build_layouts(config)
    assert max(max(s) for layout in layouts for s in layout.stride) < 2**31
    coords = np.random.default_rng(test_seed()).random((4096, 5)).astype(np.float32)
    coords[0] = 1.0
    fn = jax.jit(e4d.grid_indices_and_weights, static_argnums=1)
    for layout in layouts:
        index, weight = fn(jnp.asarray(coords), layout)
        index = np.asarray(index)
        for level in range(layout.levels):
            assert layout.offset[level] <= index[:, level].min()
            assert index[:, level].max() < layout.offset[level] + layout.size[level]
        np.testing.assert_allclose(np.asarray(weight).sum(-1), 1.0, rtol=1e-5)


def test_out_of_range_coordinates_clip_and_nan_propagates():
    model = e4d.Earth4D(SMALL, rngs=nnx.Rngs(0))
    coords = np.array([[-0.5, 1.5, 0.2, 0.3, 0.4], [0.0, 1.0, 0.2, 0.3, 0.4], [np.nan, 0.1, 0.2, 0.3, 0.4]])
    out = np.asarray(nnx.jit(lambda m, c: m(c))(model, jnp.asarray(coords, jnp.float32)))
    np.testing.assert_array_equal(out[0], out[1])
    assert np.isnan(out[2]).all() and np.isfinite(out[:2]).all()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="interpolation must be one of"):
        e4d.Earth4DConfig(interpolation="cubic")
    with pytest.raises(ValueError, match="spatial_resolution must satisfy"):
        e4d.Earth4DConfig(spatial_resolution=(64.0, 16.0))


def _time_rows(stamps: list[dt.datetime]) -> np.ndarray:
    return np.array([[s.year, s.month, s.day, s.hour, s.minute, s.second] for s in stamps], np.float32)


def test_decimal_days_and_day_of_year_match_datetime():
    rng = np.random.default_rng(test_seed())
    epoch = dt.datetime(1970, 1, 1)
    stamps = [epoch + dt.timedelta(seconds=int(s)) for s in rng.integers(0, 2_000_000_000, 2000)]
    stamps += [dt.datetime(2020, 12, 31, 23, 59, 59), dt.datetime(2021, 1, 1), dt.datetime(2000, 2, 29, 12)]
    decimal_days = jax.jit(e4d.decimal_days)
    days, doy = (np.asarray(v) for v in decimal_days(jnp.asarray(_time_rows(stamps))))
    want_days = np.array([(s - epoch).total_seconds() / 86400 for s in stamps])
    year_len = np.array(
        [366 if s.year % 4 == 0 and (s.year % 100 or s.year % 400 == 0) else 365 for s in stamps]
    )
    want_doy = np.array([(s - dt.datetime(s.year, 1, 1)).total_seconds() / 86400 for s in stamps]) / year_len
    np.testing.assert_allclose(days, want_days, rtol=0, atol=5e-3)  # float32 days: ~3 minutes
    np.testing.assert_allclose(doy, want_doy, rtol=0, atol=1e-6)
    assert doy[-3] > 0.99999 and doy[-2] == 0.0
    rows = _time_rows([dt.datetime(2020, 6, 1, 0)])
    rows[0, 3:] = np.nan  # unknown time of day: noon
    np.testing.assert_allclose(np.asarray(decimal_days(jnp.asarray(rows))[0]), [18414.5])
    rows[0, 1] = np.nan  # unknown month: NaN
    assert np.isnan(np.asarray(decimal_days(jnp.asarray(rows))[0])).all()


def test_normalizer_boxes_the_region_with_kilometre_equal_axes():
    rng = np.random.default_rng(test_seed())
    lat = rng.uniform(27.5, 28.5, 500)
    lon = rng.uniform(-81.8, -80.9, 500)
    stamps = [dt.datetime(2010, 1, 1) + dt.timedelta(days=float(d)) for d in rng.uniform(0, 5475, 500)]
    time = _time_rows(stamps)
    norm = e4d.Earth4DNormalizer.fit(lat, lon, time, margin=0.1)
    assert e4d.Earth4DNormalizer.from_dict(norm.to_dict()) == norm
    location = np.stack([lat, lon, np.full_like(lat, np.nan)], 1).astype(np.float32)
    coords = np.asarray(jax.jit(norm)(jnp.asarray(location), jnp.asarray(time)))
    assert coords.shape == (500, 5) and np.isfinite(coords).all()
    assert coords[:, [0, 1, 3]].min() > 0.05 and coords[:, [0, 1, 3]].max() < 0.95
    np.testing.assert_array_equal(coords[:, 2], 0.5)  # no elevation
    # 1 km east and 1 km north move x and y by the same amount.
    lat0, km = 28.0, 1.0 / e4d.KM_PER_DEGREE
    probe = np.array(
        [[lat0, -81.0, 0], [lat0, -81.0 + km / math.cos(math.radians(lat0)), 0], [lat0 + km, -81.0, 0]]
    )
    c = np.asarray(jax.jit(norm)(jnp.asarray(probe, jnp.float32), jnp.asarray(time[:3])))
    dx, dy = c[1, 0] - c[0, 0], c[2, 1] - c[0, 1]
    np.testing.assert_allclose(dx, dy, rtol=2e-3)  # equal up to cos(lat) across the box and float32
    np.testing.assert_allclose(dy * norm.span_km, 1.0, rtol=1e-3)
    with pytest.raises(ValueError, match="no point with a finite"):
        e4d.Earth4DNormalizer.fit(np.array([np.nan]), np.array([1.0]), time[:1])
