"""Occurrence tables (GBIF simple download, CSV, Parquet, Darwin Core Archive) -> observation-only stores."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepearth_jax import evaluate as evaluate_lib
from deepearth_jax import inputs
from deepearth_jax import train as train_lib
from deepearth_jax.config_utils import load_config
from deepearth_jax.data import modes
from deepearth_jax.data import split as split_lib
from deepearth_jax.data.__main__ import main as data_main
from deepearth_jax.data.convert import ConvertError, convert
from deepearth_jax.data.convert.occurrences import DERIVED_ID_BASE, ROW_ID_BASE
from deepearth_jax.data.store import StoreError, open_store
from deepearth_jax.data.store_check import store_info, verify_store

ROOT = Path(__file__).resolve().parents[1]

# The columns of a GBIF simple download, in its order (a subset of the middle ones).
GBIF_COLUMNS = (
    "gbifID datasetKey occurrenceID kingdom family genus species infraspecificEpithet taxonRank "
    "scientificName verbatimScientificName countryCode locality stateProvince occurrenceStatus "
    "individualCount decimalLatitude decimalLongitude coordinateUncertaintyInMeters elevation eventDate day "
    "month year taxonKey speciesKey basisOfRecord"
).split()

GOOD = [
    # gbifID, species, scientificName, lat, lon, coordinateUncertaintyInMeters, eventDate, taxon/speciesKey
    (101, "Serenoa repens", "Serenoa repens (W.Bartram) Small", 28.1, -81.4, "10", "2020-05-01", 2735055),
    (102, "Serenoa repens", "Serenoa repens", 28.2, -81.5, "", "2021-06-02T14:05:09Z", 2735055),
    (103, "Quercus virginiana", "Quercus virginiana", 28.3, -81.6, "250.5", "2019-03-04/2019-03-06", 2878688),
    (104, "Pontederia cordata", "Pontederia cordata L.", 28.4, -81.7, "-1", "2018-07-09 08:30", 2766030),
    (105, "Quercus virginiana", "Quercus virginiana Mill.", 28.5, -81.8, "5", "2022-12-31", 2878688),
]
BAD = [
    # (gbifID, species, lat, lon, eventDate, occurrenceStatus) -> kind
    ((201, "Serenoa repens", "", "-81.4", "2020-05-01", "PRESENT"), "missing_coordinates"),
    ((202, "Serenoa repens", "95.0", "-81.4", "2020-05-01", "PRESENT"), "missing_coordinates"),
    ((203, "Serenoa repens", "0", "0", "2020-05-01", "PRESENT"), "missing_coordinates"),
    ((204, "", "28.1", "-81.4", "2020-05-01", "PRESENT"), "missing_taxon"),
    ((205, "Serenoa repens", "28.1", "-81.4", "2020-05", "PRESENT"), "imprecise_date"),
    ((206, "Serenoa repens", "28.1", "-81.4", "2020-05-01/2020-06-30", "PRESENT"), "imprecise_date"),
    ((207, "Serenoa repens", "28.1", "-81.4", "2021-02-30", "PRESENT"), "bad_date"),
    ((208, "Serenoa repens", "28.1", "-81.4", "", "PRESENT"), "missing_date"),
    ((209, "Serenoa repens", "28.1", "-81.4", "2020-05-01", "ABSENT"), "absent"),
    ((101, "Serenoa repens", "28.1", "-81.4", "2020-05-01", "PRESENT"), "duplicate_id"),
    (("x7", "Serenoa repens", "28.1", "-81.4", "2020-05-01", "PRESENT"), "bad_id"),
]


def _gbif_row(values: dict) -> str:
    base = {c: "" for c in GBIF_COLUMNS}
    base.update(kingdom="Plantae", countryCode="US", stateProvince="Florida", occurrenceStatus="PRESENT")
    base["locality"] = 'near "Big" Creek'  # a quote in an unquoted TSV is text
    base.update(values)
    return "\t".join(str(base[c]) for c in GBIF_COLUMNS)


def gbif_tsv(path: Path, bad: bool = True) -> Path:
    lines = ["\t".join(GBIF_COLUMNS)]
    for gbif, species, name, lat, lon, unc, date, key in GOOD:
        url = f"https://www.inaturalist.org/observations/{gbif}"
        row = dict(gbifID=gbif, occurrenceID=url, species=species)
        row.update(scientificName=name, decimalLatitude=lat, decimalLongitude=lon)
        row.update(coordinateUncertaintyInMeters=unc, eventDate=date, taxonKey=key, speciesKey=key)
        row.update(basisOfRecord="HUMAN_OBSERVATION", taxonRank="SPECIES")
        lines.append(_gbif_row(row))
    for (gbif, species, lat, lon, date, status), _ in BAD if bad else []:
        row = dict(gbifID=gbif, species=species, scientificName=species or "Quercus L.")
        row.update(decimalLatitude=lat, decimalLongitude=lon, eventDate=date, occurrenceStatus=status)
        row.update(basisOfRecord="HUMAN_OBSERVATION", taxonKey=1, speciesKey=1 if species else "")
        lines.append(_gbif_row(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_gbif_simple_download_bad_rows_refused_then_skipped(tmp_path, capsys):
    source = gbif_tsv(tmp_path / "0001234-260101000000000.csv")  # GBIF names its TSV .csv
    with pytest.raises(ConvertError) as e:
        convert(source, tmp_path / "s")
    message = str(e.value)
    assert "\n" not in message and message.count("nothing written") == 1 and "--skip-bad" in message
    assert "11 bad source row(s)" in message
    for kind, count in (
        ("missing_coordinates", 3),
        ("imprecise_date", 2),
        ("bad_date", 1),
        ("missing_date", 1),
        ("missing_taxon", 1),
        ("absent", 1),
        ("duplicate_id", 1),
        ("bad_id", 1),
    ):
        assert f"{kind} {count} (first:" in message
    assert not (tmp_path / "s").exists()
    assert data_main(["convert", str(source), "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "11 bad source row(s)" in err[0]

    assert data_main(["convert", str(source), "--out", str(tmp_path / "s"), "--skip-bad"]) == 0
    assert "5 observations, 3 species, no embeddings" in capsys.readouterr().err
    store = open_store(tmp_path / "s")
    assert store.observation_only and verify_store(store.path) == []
    assert store.observation_ids.tolist() == [f"{g}_1" for g, *_ in GOOD]
    assert store.species_names == ["Pontederia cordata", "Quercus virginiana", "Serenoa repens"]
    assert store.species.column("taxon_id").to_pylist() == ["2766030", "2878688", "2735055"]
    assert store.column("species_index").tolist() == [2, 2, 1, 0, 1]
    np.testing.assert_array_equal(store.column("latitude"), [28.1, 28.2, 28.3, 28.4, 28.5])
    dates = np.stack([store.column(k) for k in ("year", "month", "day")], 1).tolist()
    assert dates == [[2020, 5, 1], [2021, 6, 2], [2019, 3, 4], [2018, 7, 9], [2022, 12, 31]]
    hour = store.column("hour")  # clock from a date-time; none for a date or a range
    assert hour[1] == 14 and hour[3] == 8 and np.isnan(hour[[0, 2, 4]]).all()
    assert store.column("minute")[1] == 5 and store.column("second")[1] == 9
    uncertainty = store.observations.column("coordinate_uncertainty_m").to_pylist()
    assert uncertainty == [10.0, None, 250.5, None, 5.0]  # empty and negative -> null
    assert store.observations.column("basis_of_record").to_pylist() == ["HUMAN_OBSERVATION"] * 5
    manifest = store.manifest
    assert len(manifest["skipped"]) == 11
    assert {s["kind"] for s in manifest["skipped"]} == {kind for _, kind in BAD}
    reasons = {s["kind"]: s["reason"] for s in manifest["skipped"]}
    assert "coordinates (0, 0)" in [s["reason"] for s in manifest["skipped"] if s["gbif_id"] == 203][0]
    assert "spans 61 days" in [s["reason"] for s in manifest["skipped"] if s["gbif_id"] == 206][0]
    assert "gbifID 'x7' is not a whole number" in reasons["bad_id"]
    conversion = manifest["conversion"]
    assert conversion["dates"] == {"event_date": 4, "event_date_range": 1, "year_month_day": 0}
    assert conversion["taxa"]["key_column"] == "speciesKey"
    assert conversion["observation_ids"]["gbif_id"] == 5
    read = manifest["provenance"]["read"]
    assert read["delimiter"] == "\t" and not read["quoted"]
    info = store_info(store)
    assert "observation-only" in info and "also coordinate_uncertainty_m, basis_of_record" in info


def test_csv_year_month_day_scientific_name_and_derived_ids(tmp_path):
    header = "occurrenceID,scientificName,decimalLatitude,decimalLongitude,year,month,day,locality"
    rows = [
        'urn:catalog:A:1,Sabal palmetto,28.1,-81.1,2015,4,3,"Lake Wales, Polk"',
        ",Sabal palmetto,28.2,-81.2,2016,5,6,no id",
        'urn:catalog:A:2,"Ilex glabra (L.) A.Gray",28.3,-81.3,2017,7,8,x',
    ]
    (tmp_path / "a.csv").write_text("\n".join([header, *rows]) + "\n")
    (tmp_path / "b.csv").write_text("\n".join([header, *reversed(rows)]) + "\n")
    a, b = convert(tmp_path / "a.csv", tmp_path / "sa"), convert(tmp_path / "b.csv", tmp_path / "sb")
    assert a.num_observations == 3 and a.species_names == ["Ilex glabra (L.) A.Gray", "Sabal palmetto"]
    gbif = a.column("gbif_id")
    assert DERIVED_ID_BASE <= gbif[0] < ROW_ID_BASE and gbif[1] == ROW_ID_BASE + 2
    # Hashed ids follow the occurrenceID, not the row: the same in a file of another order.
    assert set(a.observation_ids[[0, 2]]) == set(b.observation_ids[[0, 2]])
    assert a.column("year").tolist() == [2015, 2016, 2017] and a.column("day").tolist() == [3, 6, 8]
    assert a.species.column("taxon_id").to_pylist()[1].startswith("name-sha1:")
    assert a.species.column("taxon_id").to_pylist() == b.species.column("taxon_id").to_pylist()
    assert a.manifest["conversion"]["observation_ids"] == {
        "occurrence_id": 0,
        "gbif_id": 0,
        "derived_from_occurrence_id": 2,
        "derived_from_row": 1,
    }
    assert a.manifest["provenance"]["read"] == {"delimiter": ",", "quoted": True, "file": "a.csv"}
    assert "coordinate_uncertainty_m" not in a.observations.column_names


def test_parquet_typed_columns_and_the_deepearth_occurrence_id(tmp_path):
    table = pa.table(
        {
            "gbifID": pa.array([11, 12, 13], pa.int64()),
            "occurrenceID": ["11_2", "12_1", "99_1"],  # 99_1 disagrees with gbifID 13: gbifID wins
            "species": ["A a", "B b", "A a"],
            "taxonKey": pa.array([1.0, 2.0, 1.0]),
            "decimalLatitude": [10.0, 11.0, 12.0],
            "decimalLongitude": [20.0, 21.0, 22.0],
            "eventDate": ["2011-01-02", None, "2013-03-04"],
            "year": pa.array([2011, 2012, 2013], pa.int32()),
            "month": pa.array([1, 2, 3], pa.int32()),
            "day": pa.array([2, 29, 4], pa.int32()),
            "coordinateUncertaintyInMeters": [1.5, None, 3.0],
        }
    )
    pq.write_table(table, tmp_path / "occ.parquet")
    store = convert(tmp_path / "occ.parquet", tmp_path / "s")
    assert store.observation_ids.tolist() == ["11_2", "12_1", "13_1"]
    assert store.column("image_index").tolist() == [2, 1, 1]
    assert store.species.column("taxon_id").to_pylist() == ["1", "2"]  # no "1.0"
    assert store.column("month").tolist() == [1, 2, 3] and store.column("day").tolist() == [2, 29, 4]
    assert store.manifest["conversion"]["dates"]["year_month_day"] == 1
    assert store.observations.column("coordinate_uncertainty_m").to_pylist() == [1.5, None, 3.0]


META = """<?xml version="1.0" encoding="UTF-8"?>
<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="eml.xml">
  <core encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy=""
        ignoreHeaderLines="1" rowType="{row_type}">
    <files><location>occurrence.txt</location></files>
    <id index="0" />
    <field index="0" term="http://rs.gbif.org/terms/1.0/gbifID"/>
    <field index="1" term="http://rs.tdwg.org/dwc/terms/scientificName"/>
    <field index="2" term="http://rs.tdwg.org/dwc/terms/decimalLatitude"/>
    <field index="3" term="http://rs.tdwg.org/dwc/terms/decimalLongitude"/>
    <field index="4" term="http://rs.tdwg.org/dwc/terms/eventDate"/>
    <field index="6" term="http://rs.tdwg.org/dwc/terms/species"/>
    <field term="http://rs.tdwg.org/dwc/terms/basisOfRecord" default="PRESERVED_SPECIMEN"/>
  </core>
</archive>
"""


def dwca_zip(path: Path, row_type: str = "http://rs.tdwg.org/dwc/terms/Occurrence") -> Path:
    rows = [
        "gbifID\tscientificName\tdecimalLatitude\tdecimalLongitude\teventDate\tunused\tspecies",
        "5\tLiatris spicata (L.) Willd.\t27.5\t-81.5\t2012-09-10\tz\tLiatris spicata",
        "6\tLiatris spicata (L.) Willd.\t27.6\t-81.6\t2012-09-11T06:07\tz\tLiatris spicata",
        "7\tCoreopsis leavenworthii\t27.7\t-81.7\t2013-10-12\tz\tCoreopsis leavenworthii",
    ]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("meta.xml", META.format(row_type=row_type))
        z.writestr("occurrence.txt", "\n".join(rows) + "\n")
        z.writestr("eml.xml", "<eml/>")
    return path


def test_darwin_core_archive(tmp_path):
    store = convert(dwca_zip(tmp_path / "dwca.zip"), tmp_path / "s")
    assert store.observation_ids.tolist() == ["5_1", "6_1", "7_1"]
    assert store.species_names == ["Coreopsis leavenworthii", "Liatris spicata"]
    assert store.column("hour").tolist()[1] == 6
    assert store.observations.column("basis_of_record").to_pylist() == ["PRESERVED_SPECIMEN"] * 3
    assert store.manifest["provenance"]["source_format"] == "dwca"
    assert store.manifest["provenance"]["read"]["core_file"] == "occurrence.txt"
    taxon = dwca_zip(tmp_path / "taxa.zip", row_type="http://rs.tdwg.org/dwc/terms/Taxon")
    with pytest.raises(StoreError, match="the archive's core is http://rs.tdwg.org/dwc/terms/Taxon, not"):
        convert(taxon, tmp_path / "t")


def test_a_zipped_simple_download(tmp_path):
    """GBIF delivers a simple download as a zip of one tab-separated file (named .csv), no meta.xml."""
    source = gbif_tsv(tmp_path / "0001234-260101000000000.csv", bad=False)
    with zipfile.ZipFile(tmp_path / "download.zip", "w") as z:
        z.write(source, source.name)
    store = convert(tmp_path / "download.zip", tmp_path / "s")
    assert store.observation_ids.tolist() == [f"{g}_1" for g, *_ in GOOD]
    read = store.manifest["provenance"]["read"]
    assert read["delimiter"] == "\t" and read["archive"] == "download.zip"


def test_a_gzipped_download(tmp_path):
    import gzip

    source = gbif_tsv(tmp_path / "occ.tsv", bad=False)
    (tmp_path / "occ.tsv.gz").write_bytes(gzip.compress(source.read_bytes()))
    store = convert(tmp_path / "occ.tsv.gz", tmp_path / "s")
    assert store.observation_ids.tolist() == [f"{g}_1" for g, *_ in GOOD]


def test_a_table_without_the_darwin_core_columns_is_refused(tmp_path):
    (tmp_path / "x.tsv").write_text("id\tname\tlat\n1\tA a\t3\n")
    with pytest.raises(StoreError, match=r"lacks the Darwin Core column\(s\) decimalLatitude; decimalLong"):
        convert(tmp_path / "x.tsv", tmp_path / "s")


@pytest.fixture(scope="module")
def occurrence_store(tmp_path_factory):
    """An observation-only store from a GBIF-style TSV: 3 species around 6 sites over 2015-2020."""
    root = tmp_path_factory.mktemp("occ")
    rng = np.random.default_rng(7)
    lines = ["\t".join(GBIF_COLUMNS)]
    sites = rng.uniform([28.0, -81.9], [28.9, -81.0], (6, 2))
    for i in range(360):
        site = int(rng.integers(6))
        s = site // 2  # two sites per species, each species in its own season
        lat, lon = sites[site] + rng.normal(0, 0.01, 2)
        date = f"{rng.integers(2015, 2021)}-{1 + 4 * s + int(rng.integers(3)):02d}-{rng.integers(1, 29):02d}"
        row = dict(gbifID=1000 + i, species=f"Species {'abc'[s]}", decimalLatitude=round(lat, 5))
        row.update(decimalLongitude=round(lon, 5), eventDate=date, speciesKey=s + 1)
        lines.append(_gbif_row(row))
    (root / "occ.tsv").write_text("\n".join(lines) + "\n")
    store = convert(root / "occ.tsv", root / "store")
    return store.path, root


def test_split_train_evaluate_geo_prior_and_refuse_embedding_modes(occurrence_store, tmp_path, capsys):
    store_path, root = occurrence_store
    split_path = tmp_path / "split.json"
    # The default test year 2025 is absent: the most recent year (2020) is held out instead, and recorded.
    assert data_main(["split", str(store_path), "--out", str(split_path), "--regions", "1"]) == 0
    strategy = json.loads(split_path.read_text())["split_strategy"]
    assert strategy["temporal_split"]["test_years"] == [2020]
    assert "most recent year in the pool (2020)" in strategy["temporal_split"]["test_years_rule"]
    assert strategy["spatial_split"]["candidate_pool"] == "all"
    split = split_lib.load_split(split_path)
    assert len(split.ids) == 360
    assert split.raw["split_statistics"]["temporal_test_count"] > 0
    # Asking for 2025 explicitly is still refused.
    explicit = ["split", str(store_path), "--out", str(tmp_path / "x.json"), "--test-years", "2025"]
    assert data_main(explicit) == 2
    capsys.readouterr()

    def config(spec: str, **more):
        values = {"store": store_path, "split_file": split_path, "num_steps": 4, **more}
        return load_config(f"{ROOT}/configs/{spec}", [f"--config.{k}={v}" for k, v in values.items()])

    summary = train_lib.train_and_evaluate(config("geo_prior.py:tiny"), tmp_path / "g")
    assert summary["steps"] == 4 and summary["complete"]
    result = evaluate_lib.evaluate_workdir(tmp_path / "g")
    assert 0.0 <= result["test/top5"] <= 1.0 and "test/baseline_knn/top5" in result
    for spec in ("vision.py:tiny", "language.py:tiny"):
        with pytest.raises(modes.MissingEmbeddingsError, match="has none \\(an observation-only store"):
            inputs.prepare_data(config(spec), tmp_path / spec)
        assert not (tmp_path / spec).exists()  # refused before a workdir, a split or a compile
    argv = ["--config", f"{ROOT}/configs/vision.py:tiny", "--workdir", str(tmp_path / "v")]
    argv += [f"--config.store={store_path}", f"--config.split_file={split_path}"]
    assert train_lib.main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "mode 'vision_pooled' needs vision embeddings" in err[0]
