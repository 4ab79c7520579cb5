"""Synthetic DeepEarth datasets: deterministic by seed, realistic in structure, learnable but not trivial.

The generative model (all in float32):

* Sites: clusters of observations spread over the Central Florida box (lat 28.033..28.978, lon
  -81.934..-80.902); an observation lies within a couple of km of its site.
* Species: long-tailed (Zipf) frequencies; each species has a range (1..3 clustered Gaussian centres, radius
  5..15 km) and is seen at the sites inside it, so the species mix changes smoothly over the land: a
  held-out region holds a different mix than the training data, yet one its surroundings predict.
* Years 2010..2025, more observations each year (as on iNaturalist). Phenology: each species has a seasonal
  peak (a day of year) and is observed around it (wrapped normal, sd 20..40 days), so place and date together
  say which species are likely (a geo prior can beat the frequency and nearest-neighbour baselines; fusion
  can help vision).
* Vision: the pooled embedding of an observation is
      species prototype + site effect + year drift + observation noise,
  with prototypes that share a genus component (so related species are confusable). Prototypes, site effects
  and drift live in a low-rank subspace of D, so difficulty hardly depends on D. Tokens vary around that mean
  over (H, W), and the T time steps are near-duplicates, as in V-JEPA 2 embeddings of a repeated still image.
* Language: one vector per species, a fixed random linear map of the species' vision prototype plus noise,
  so cross-modal retrieval is learnable.

Held-out years (drift extrapolates) and regions (unseen site effects, a shifted species mix) are measurably
harder than a random split. Rows are generated one at a time from a per-row seed, so datasets of any size are
written streaming and any row can be regenerated alone.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepearth_jax.data import ids as ids_lib
from deepearth_jax.data import store as store_lib
from deepearth_jax.data.sources import REAL_LANGUAGE_DIM, REAL_VISION_SHAPE
from deepearth_jax.data.store_writer import StoreWriter, observation_table, species_table
from deepearth_jax.errors import StoreError
from deepearth_jax.io import progress_bar

log = logging.getLogger(__name__)

# Bumped whenever the same config generates different data (the demo store's cache key includes it).
# 2: species phenology (month and day drawn around a per-species seasonal peak).
# 3: species ranges (clustered Gaussian centres) decide the sites a species is seen at; sharper phenology.
GENERATOR_VERSION = 3

# Species ranges: 1..3 centres within ~RANGE_CLUSTER_KM (sd) of a home point, each a Gaussian of a radius
# drawn from RANGE_RADIUS_KM, and a floor (a share of the peak density) so any species may turn up anywhere.
RANGE_CLUSTER_KM = 12.0
RANGE_RADIUS_KM = (5.0, 15.0)
RANGE_FLOOR = 0.01
# Phenology: observations of a species fall around its seasonal peak with this spread (sd, days).
PHENOLOGY_SD_DAYS = (20.0, 40.0)


FLORIDA_BOX = {"south": 28.033, "north": 28.978, "west": -81.934, "east": -80.902}
FIRST_YEAR, LAST_YEAR = 2010, 2025

_GENERA = (
    "Quercus Pinus Sabal Serenoa Ilex Magnolia Acer Vaccinium Lyonia Asclepias Salvia Rudbeckia Coreopsis "
    "Liatris Solidago Hypericum Andropogon Callicarpa Tillandsia Persea Myrica Licania Carphephorus Bidens "
    "Passiflora Smilax Vitis Ipomoea Helianthus Eryngium Lantana Chrysopsis Polygala Sisyrinchium"
).split()
_EPITHETS = (
    "virginiana palustris minor repens glabra grandiflora rubrum myrtillus ferruginea tuberosa coccinea "
    "hirta lanceolata spicata sempervirens vomitoria borbonia cerifera michauxii odorata incarnata "
    "floridana elliottii laurifolia geminata nitida fasciculata americana alba caroliniana"
).split()


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. Shapes are free: tests use a few KB, benchmarks the real `(8, 24, 24, 1408)`."""

    observations: int
    species: int
    vision_shape: tuple[int, int, int, int] = REAL_VISION_SHAPE
    language_dim: int = REAL_LANGUAGE_DIM
    seed: int = 0
    vision_fraction: float = 0.9  # share of observations that have a vision embedding
    num_sites: int | None = None  # default: about one site per 40 observations, 6..400

    def __post_init__(self):
        if self.observations < 1:
            raise StoreError(f"observations must be >= 1, got {self.observations}")
        if not 1 <= self.species <= self.observations:
            raise StoreError(f"species must be in 1..observations ({self.observations}), got {self.species}")
        if len(self.vision_shape) != 4 or min(self.vision_shape) < 1:
            raise StoreError(f"vision shape must be four positive sizes T,H,W,D, got {self.vision_shape}")
        if self.language_dim < 1:
            raise StoreError(f"language dim must be >= 1, got {self.language_dim}")
        if not 0.0 < self.vision_fraction <= 1.0:
            raise StoreError(f"vision fraction must be in (0, 1], got {self.vision_fraction}")


def _range_affinity(
    site_lat: np.ndarray, site_lon: np.ndarray, num_species: int, rng: np.random.Generator
) -> np.ndarray:
    """(S, num_sites) rows summing to 1: how a species' observations spread over the sites.

    Each species has a range: 1..3 centres clustered within ~RANGE_CLUSTER_KM of a home point, each a
    Gaussian of radius RANGE_RADIUS_KM; its affinity to a site is the range's density there (plus a small
    floor, so a species is rarely but possibly seen anywhere). Smooth in space, so the species mix of a
    held-out region is predictable from the land around it.
    """
    lat0 = np.radians(np.mean(site_lat))
    sx, sy = site_lon * 111.0 * np.cos(lat0), site_lat * 111.0
    home_x = rng.uniform(sx.min(), sx.max(), num_species)
    home_y = rng.uniform(sy.min(), sy.max(), num_species)
    centres = rng.integers(1, 4, num_species)
    radius = rng.uniform(*RANGE_RADIUS_KM, num_species)
    density = np.zeros((num_species, len(sx)))
    for c in range(3):
        cx = home_x + rng.normal(0.0, RANGE_CLUSTER_KM, num_species)
        cy = home_y + rng.normal(0.0, RANGE_CLUSTER_KM, num_species)
        d2 = (sx[None, :] - cx[:, None]) ** 2 + (sy[None, :] - cy[:, None]) ** 2
        on = (c < centres).astype(np.float64)[:, None]
        density += on * np.exp(-0.5 * d2 / radius[:, None] ** 2)
    density += RANGE_FLOOR * density.max(axis=1, keepdims=True)
    return density / density.sum(axis=1, keepdims=True)


def _phenology_dates(
    year: np.ndarray, species: np.ndarray, num_species: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(month, day) of each observation: its species' seasonal peak day plus a wrapped normal offset."""
    peak = rng.uniform(0.0, 365.0, num_species)
    spread = rng.uniform(*PHENOLOGY_SD_DAYS, num_species)
    doy = np.mod(peak[species] + rng.normal(0.0, 1.0, len(species)) * spread[species], 365.0).astype(np.int64)
    first = (np.asarray(year, np.int64) - 1970).astype("datetime64[Y]").astype("datetime64[D]")
    dates = first + np.minimum(doy, 364)
    months = dates.astype("datetime64[M]")
    month = (months.astype(np.int64) % 12 + 1).astype(np.int64)
    day = (dates - months.astype("datetime64[D]")).astype(np.int64) + 1
    return month, day


def _draw_sites(cum: np.ndarray, species: np.ndarray, u: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """For each row, how many of its species' cumulative site weights `cum[species]` lie below `u`.

    The same numbers as `(cum[species] < u[:, None]).sum(1)`, in chunks of rows, so that 1,000,000 rows over
    400 sites never hold the (N, sites) float64 gather (3.2 GB) at once.
    """
    out = np.empty(len(species), np.int64)
    for start in range(0, len(species), chunk):
        stop = start + chunk
        out[start:stop] = (cum[species[start:stop]] < u[start:stop, None]).sum(axis=1)
    return out


class SyntheticDataset:
    """The generated dataset: observation metadata in RAM (small), embeddings generated row by row."""

    # Signal scales, in units of the per-dimension observation noise (tuned so that a mean-pool linear probe
    # lands well above chance and well below 100%).
    _SPECIES_SCALE = 1.0
    _GENUS_SHARE = 0.6
    _SITE_SCALE = 1.0
    _DRIFT_SCALE = 1.0
    _YEAR_SCALE = 1.2
    _TOKEN_SCALE = 1.0
    _TIME_NOISE = 0.05

    def __init__(self, config: SyntheticConfig):
        self.config = config
        cfg = config
        rng = np.random.default_rng([cfg.seed, 0])
        n, s = cfg.observations, cfg.species
        d = cfg.vision_shape[3]
        self.rank = min(d, 24)
        num_sites = cfg.num_sites or int(np.clip(n // 40, 6, 400))

        # Species: names, ids, long-tailed frequencies (shuffled so index order is not frequency order).
        self.taxon_names = _species_names(s, rng)
        self.taxon_ids = [str(5_000_000 + 17 * i) for i in range(s)]
        freq = 1.0 / np.arange(1, s + 1) ** 0.9
        freq = freq[rng.permutation(s)]
        freq /= freq.sum()

        # Sites spread over the box; species prefer a few of them.
        site_lat = rng.uniform(FLORIDA_BOX["south"] + 0.02, FLORIDA_BOX["north"] - 0.02, num_sites)
        site_lon = rng.uniform(FLORIDA_BOX["west"] + 0.02, FLORIDA_BOX["east"] - 0.02, num_sites)
        rng.dirichlet(np.full(num_sites, 0.1), size=s)  # version 2's affinities: drawn to keep later draws
        affinity = _range_affinity(site_lat, site_lon, s, np.random.default_rng([cfg.seed, 6]))

        # Years grow over time; species' frequencies trend up or down over the years (so a held-out year has a
        # shifted species mix), and every species appears at least once.
        years = np.arange(FIRST_YEAR, LAST_YEAR + 1)
        year_weight = np.exp(0.22 * (years - FIRST_YEAR))
        year = rng.choice(years, size=n, p=year_weight / year_weight.sum())
        trend = rng.normal(0.0, 0.1, s)
        species = np.empty(n, np.int64)
        for y in years:
            rows = np.flatnonzero(year == y)
            p_year = freq * np.exp(trend * (y - 2017.5))
            species[rows] = rng.choice(s, size=len(rows), p=p_year / p_year.sum())
        species[rng.choice(n, size=s, replace=False)] = np.arange(s)
        cum = np.cumsum(affinity, axis=1)
        site = _draw_sites(cum, species, rng.random(n)).clip(0, num_sites - 1)
        km = 1.0 / 111.0
        lat = site_lat[site] + rng.normal(0, 1.5 * km, n)
        lon = site_lon[site] + rng.normal(0, 1.5 * km, n) / np.cos(np.radians(site_lat[site]))
        lat = lat.clip(FLORIDA_BOX["south"], FLORIDA_BOX["north"])
        lon = lon.clip(FLORIDA_BOX["west"], FLORIDA_BOX["east"])
        # The uniform dates of generator version 1 are still drawn, so every later draw (and so the vision and
        # language embeddings) is unchanged; the dates come from the species' phenology instead.
        rng.integers(1, 13, n), rng.integers(1, 29, n)
        month, day = _phenology_dates(year, species, s, np.random.default_rng([cfg.seed, 5]))
        has_time = rng.random(n) > 0.1
        hour = np.where(has_time, rng.integers(6, 20, n), -1)
        minute = np.where(has_time, rng.integers(0, 60, n), -1)
        second = np.where(has_time, rng.integers(0, 60, n), -1)
        has_vision = rng.random(n) < cfg.vision_fraction
        if not has_vision.any():
            has_vision[0] = True
        # GBIF-like ids 1e9 + 97k, drawn without materialising the 41M candidates (the same draws as from
        # np.arange(1e9, 5e9, 97), without its 330 MB).
        candidates = len(range(1_000_000_000, 5_000_000_000, 97))
        gbif = np.sort(1_000_000_000 + 97 * rng.choice(candidates, n, replace=False).astype(np.int64))

        self.gbif_id = gbif
        self.species_index = species.astype(np.int32)
        self.site = site
        self.latitude, self.longitude = lat, lon
        self.year, self.month, self.day = year.astype(np.int32), month.astype(np.int32), day.astype(np.int32)
        self.hour, self.minute, self.second = hour, minute, second
        self.has_vision = has_vision
        # The source split as the published dataset has it.
        self.source_split = np.where(self.year >= LAST_YEAR, "temporal_test", "train")

        self._draw_embedding_model(rng, d, num_sites)

    def _draw_embedding_model(self, rng: np.random.Generator, d: int, num_sites: int) -> None:
        """The embedding model, in a rank-r subspace of D (drawn after the metadata, from the same rng)."""
        cfg, s, rank = self.config, self.config.species, self.rank
        basis, _ = np.linalg.qr(rng.standard_normal((d, rank)))
        self._basis = basis.astype(np.float32)  # (D, r)
        num_genera = max(2, s // 4)
        genus_of = rng.integers(0, num_genera, s)
        genus = rng.standard_normal((num_genera, rank))
        own = rng.standard_normal((s, rank))
        self.prototypes_low = (self._GENUS_SHARE * genus[genus_of] + own) * self._SPECIES_SCALE
        self._site_low = rng.standard_normal((num_sites, rank)) * self._SITE_SCALE
        self._drift_low = rng.standard_normal(rank) * self._DRIFT_SCALE
        # Each species looks a little different each year (phenology, cameras): unseen for a held-out year.
        self._year_low = rng.standard_normal((s, LAST_YEAR - FIRST_YEAR + 1, rank)) * self._YEAR_SCALE
        lang_map = rng.standard_normal((cfg.language_dim, rank)) / np.sqrt(rank)
        lang = self.prototypes_low @ lang_map.T + 0.3 * rng.standard_normal((s, cfg.language_dim))
        self.language_vectors = lang.astype(np.float32)  # (S, L)

    @property
    def num_observations(self) -> int:
        return self.config.observations

    def observation_ids(self) -> np.ndarray:
        return ids_lib.make_observation_ids(self.gbif_id, 1)

    def pooled_mean(self, i: int) -> np.ndarray:
        """The noiseless-token mean of observation i's vision embedding, `(D,)` float32."""
        years_in = self.year[i] - FIRST_YEAR
        drift = (years_in / (LAST_YEAR - FIRST_YEAR)) ** 2  # accelerating: the newest year extrapolates
        low = (
            self.prototypes_low[self.species_index[i]]
            + self._site_low[self.site[i]]
            + self._year_low[self.species_index[i], years_in]
            + drift * self._drift_low
        )
        noise = np.random.default_rng([self.config.seed, 1, i]).standard_normal(self._basis.shape[0])
        return (self._basis @ low).astype(np.float32) + noise.astype(np.float32)

    def vision_row(self, i: int) -> np.ndarray:
        """Observation i's vision embedding, `(T, H, W, D)` float32, regenerated deterministically."""
        t, h, w, d = self.config.vision_shape
        rng = np.random.default_rng([self.config.seed, 2, i])
        tokens = rng.standard_normal((h, w, d), dtype=np.float32)
        tokens *= self._TOKEN_SCALE
        tokens += self.pooled_mean(i)
        row = np.empty((t, h, w, d), np.float32)
        row[:] = tokens
        if t > 1:
            row += self._TIME_NOISE * rng.standard_normal((t, h, w, d), dtype=np.float32)
        return row

    def metadata_columns(self) -> dict[str, np.ndarray]:
        """Per-observation metadata as numpy columns (hour/minute/second -1 where unknown)."""
        return {
            "gbif_id": self.gbif_id,
            "taxon_id": np.asarray(self.taxon_ids, dtype=object)[self.species_index],
            "taxon_name": np.asarray(self.taxon_names, dtype=object)[self.species_index],
            "species_index": self.species_index,
            "latitude": self.latitude,
            "longitude": self.longitude,
            "year": self.year,
            "month": self.month,
            "day": self.day,
            "hour": self.hour,
            "minute": self.minute,
            "second": self.second,
            "has_vision": self.has_vision,
            "split": self.source_split,
        }

    def image_urls(self) -> list[str]:
        return [f"https://example.invalid/photos/{g}/original.jpg" for g in self.gbif_id]


def _species_names(s: int, rng: np.random.Generator) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    order = rng.permutation(len(_GENERA) * len(_EPITHETS))
    for k in range(s):
        code = int(order[k % len(order)])
        name = f"{_GENERA[code // len(_EPITHETS)]} {_EPITHETS[code % len(_EPITHETS)]}"
        if name in seen:
            name = f"{name} var. {k}"
        seen.add(name)
        names.append(name)
    return names


def write_store(
    dataset: SyntheticDataset,
    out: str | Path,
    *,
    dtype: str = "float16",
    progress: bool = False,
    embeddings: bool = True,
) -> store_lib.Store:
    """Writes `dataset` as a store directly (streaming, one vision row at a time); returns it opened.

    `embeddings=False` writes an observation-only store: the same places, dates and species (ranges and
    seasons), no vision or language arrays (every vision_row and language_row -1).
    """
    cfg = dataset.config
    n = cfg.observations
    vision_obs = np.flatnonzero(dataset.has_vision) if embeddings else np.zeros(0, np.int64)
    vision_row = np.full(n, -1, np.int64)
    vision_row[vision_obs] = np.arange(len(vision_obs))
    writer = StoreWriter(
        out,
        num_vision_rows=len(vision_obs),
        vision_shape=cfg.vision_shape if embeddings else None,
        vision_dtype=dtype,
        num_language_rows=cfg.species if embeddings else 0,
        language_dim=cfg.language_dim if embeddings else None,
        provenance={
            "source_layout": "synthetic",
            "source": f"deepearth_jax.data.synthetic seed={cfg.seed}",
            "synthetic": {
                **dataclasses.asdict(cfg),
                "vision_shape": list(cfg.vision_shape),
                "embeddings": embeddings,
            },
        },
    )
    if embeddings:
        writer.language[:] = dataset.language_vectors
    row_bytes = int(np.prod(cfg.vision_shape)) * np.dtype(dtype).itemsize
    bar = progress_bar(len(vision_obs), "synth", enabled=progress)
    limit = np.finfo(np.float16).max
    for row, i in enumerate(vision_obs):
        values = dataset.vision_row(int(i))
        if dtype == "float16" and np.abs(values).max() > limit:
            raise store_lib.StoreError(f"synthetic row {i} overflows float16")
        writer.vision[row] = values
        if (row + 1) % max(1, (256 << 20) // row_bytes) == 0:
            writer.save_progress()  # flush and remap: written rows leave RSS, whatever the store's size
        bar.update(1)
    bar.close()
    meta = dataset.metadata_columns()
    observations = observation_table(
        gbif_id=meta["gbif_id"],
        taxon_id=meta["taxon_id"].tolist(),
        taxon_name=meta["taxon_name"].tolist(),
        species_index=meta["species_index"],
        latitude=meta["latitude"],
        longitude=meta["longitude"],
        year=meta["year"],
        month=meta["month"],
        day=meta["day"],
        clock={k: np.where(meta[k] < 0, np.nan, meta[k]) for k in ("hour", "minute", "second")},
        vision_row=vision_row,
        source_split=meta["split"].tolist(),
        image_url=dataset.image_urls(),
        has_language=embeddings,
    )
    language_rows = np.arange(cfg.species) if embeddings else np.full(cfg.species, -1)
    species = species_table(
        dataset.taxon_ids, dataset.taxon_names, language_rows, dataset.species_index, vision_row
    )
    writer.finalize(observations, species)
    return store_lib.open_store(out)


def make_synthetic_store(
    out: str | Path,
    observations: int,
    species: int,
    vision_shape: Sequence[int] = (2, 4, 4, 16),
    language_dim: int = 32,
    seed: int = 0,
    vision_fraction: float = 0.9,
    dtype: str = "float16",
    embeddings: bool = True,
) -> store_lib.Store:
    """Convenience for tests and demos: generate and write a small store in one call (`embeddings=False`:
    an observation-only store, see `write_store`)."""
    cfg = SyntheticConfig(
        observations=observations,
        species=species,
        vision_shape=tuple(vision_shape),
        language_dim=language_dim,
        seed=seed,
        vision_fraction=vision_fraction,
    )
    return write_store(SyntheticDataset(cfg), out, dtype=dtype, embeddings=embeddings)
