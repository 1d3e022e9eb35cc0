"""ESCI loader on the shared real sample and on tiny frames in the original esci-data format, plus
simulated engagement over a real catalog."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ltr.data.dataset import Dataset, DatasetError
from ltr.data.esci import ORIGINAL_EXAMPLES, ORIGINAL_PRODUCTS, esci_sample_dir, load_esci
from ltr.data.schemas import query_id
from ltr.sim.sessions import simulate_engagement


@pytest.fixture(scope="module")
def shared_esci(tmp_path_factory) -> Path:
    src = esci_sample_dir()
    if not (src / "judgments.parquet").exists():
        pytest.skip(f"shared ESCI sample not found at {src} (set LTR_ESCI_DIR to its folder)")
    out = tmp_path_factory.mktemp("esci")
    load_esci(src, out)
    return out


def test_shared_sample(shared_esci: Path) -> None:
    ds = Dataset.load(shared_esci)
    assert len(ds.queries) == 94 and len(ds.judgments) == 4135 and len(ds.candidates) == 4135
    assert (ds.judgments["query_id"] == ds.judgments["query"].map(query_id)).all()
    assert set(ds.judgments["grade"]) == {0, 1, 2, 3}
    assert set(ds.judgments["product_id"]) <= set(ds.products["product_id"])
    meta = json.loads((shared_esci / "metadata.json").read_text())
    assert meta["source"] == "esci" and meta["simulated_engagement"] is False


def test_simulated_engagement_on_real_catalog(shared_esci: Path, tmp_path: Path) -> None:
    rep = simulate_engagement(shared_esci, seed=3, sessions_per_query=40, progress=False)
    ds = Dataset.load(shared_esci)
    assert ds.engagement_simulated and ds.has_engagement
    assert ds.metadata["engagement"]["spearman_grade_ctr"] == rep["spearman_grade_ctr"]
    assert 0.0 < rep["spearman_grade_ctr"] < 0.9
    assert set(ds.impressions["query_id"]) == set(ds.queries["query_id"])
    before = (shared_esci / "impressions.parquet").read_bytes()
    with pytest.raises(DatasetError, match="overwrite=True"):
        simulate_engagement(shared_esci, seed=4, progress=False)
    assert (shared_esci / "impressions.parquet").read_bytes() == before
    simulate_engagement(shared_esci, seed=3, sessions_per_query=40, overwrite=True, progress=False)
    assert (shared_esci / "impressions.parquet").read_bytes() == before  # deterministic for a seed


def _original(tmp_path: Path) -> Path:
    ex = pd.DataFrame({
        "example_id": range(7),
        "query": ["Running Shoes", "running  shoes", "running shoes", "yoga mat", "yoga mat", "zapatos", "yoga mat"],
        "query_id": [1, 1, 1, 2, 2, 3, 2],
        "product_id": ["A1", "A1", "A2", "B1", "B2", "C1", "B3"],
        "product_locale": ["us", "us", "us", "us", "us", "es", "us"],
        "esci_label": ["E", "E", "S", "exact", "I", "E", "C"],
        "small_version": 1, "large_version": 1,
        "split": ["train", "train", "train", "test", "test", "train", "test"]})
    tmp_path.mkdir(parents=True, exist_ok=True)
    pr = pd.DataFrame({
        "product_id": ["A1", "A2", "B1", "B2", "C1", "B3"],
        "product_title": ["Nike Running Shoe", "Adidas Trail Shoe", "Gaiam Yoga Mat", None, "Zapato", "Yoga Block"],
        "product_description": ["<p>Light &amp; fast</p><br>", None, "Thick mat", "x", "y", "z"],
        "product_bullet_point": ["Mesh\nFoam", None, "6mm", None, None, None],
        "product_brand": ["Nike", "Adidas", "Gaiam", None, "Z", "Gaiam"],
        "product_color": ["Black", None, "Purple", None, None, "Blue"],
        "product_locale": ["us", "us", "us", "us", "es", "us"]})
    ex.to_parquet(tmp_path / ORIGINAL_EXAMPLES)
    pr.to_parquet(tmp_path / ORIGINAL_PRODUCTS)
    return tmp_path


def test_original_format(tmp_path: Path) -> None:
    src = _original(tmp_path / "src")
    s = load_esci(src, tmp_path / "out")
    ds = Dataset.load(tmp_path / "out")
    assert s["format"] == "esci-data"
    assert set(ds.queries["query"]) == {"Running Shoes", "yoga mat"}  # case/space variants share one id
    assert len(ds.judgments) == 5 and s["counts"]["duplicate_pairs_dropped"] == 1
    g = ds.judgments.set_index("product_id")["grade"].to_dict()
    assert g == {"A1": 3, "A2": 2, "B1": 3, "B2": 0, "B3": 1}
    assert set(ds.judgments["esci_label"]) == {"E", "S", "I", "C"}
    desc = ds.products.set_index("product_id")["description"]
    assert desc["A1"] == "Light & fast"
    assert "C1" not in set(ds.products["product_id"])
    assert ds.products["title"].notna().all()

    load_esci(src, tmp_path / "test", split="test")
    assert set(Dataset.load(tmp_path / "test").judgments["product_id"]) == {"B1", "B2", "B3"}
    load_esci(src, tmp_path / "one", max_queries=1)
    assert Dataset.load(tmp_path / "one").queries["query_id"].nunique() == 1
    load_esci(src, tmp_path / "es", locale="es")
    assert Dataset.load(tmp_path / "es").judgments["product_id"].tolist() == ["C1"]


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no ESCI data found"):
        load_esci(tmp_path, tmp_path / "out")
    src = _original(tmp_path / "src")
    with pytest.raises(DatasetError, match=r"locale='jp'.*\['es', 'us'\]"):
        load_esci(src, tmp_path / "out", locale="jp")
    with pytest.raises(DatasetError, match="split='dev'"):
        load_esci(src, tmp_path / "out", split="dev")
    ex = pd.read_parquet(src / ORIGINAL_EXAMPLES)
    ex.loc[0, "esci_label"] = "maybe"
    ex.to_parquet(src / ORIGINAL_EXAMPLES)
    with pytest.raises(DatasetError, match="esci_label.*MAYBE"):
        load_esci(src, tmp_path / "out")
    ex.loc[0, "esci_label"] = "E"
    ex.loc[0, "product_id"] = "GHOST"
    ex.to_parquet(src / ORIGINAL_EXAMPLES)
    with pytest.raises(DatasetError, match="GHOST"):
        load_esci(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
