"""Table contracts: violations raise SchemaError naming the column and the fix; valid tables round-trip."""
from __future__ import annotations

import pandas as pd
import pytest

from ltr.data.dataset import Dataset, DatasetError, read_table, write_table
from ltr.data.schemas import IMPRESSIONS, JUDGMENTS, PRODUCTS, SchemaError, query_id


def _products(n: int = 3) -> pd.DataFrame:
    return pd.DataFrame({
        "product_id": [f"P{i}" for i in range(n)], "title": [f"Brand Running Shoes {i}" for i in range(n)],
        "description": ["desc"] * n, "bullet_points": ["a\nb"] * n, "brand": ["Brand"] * n, "color": ["Black"] * n,
        "category": ["Shoes > Running"] * n, "price": [10.0 + i for i in range(n)], "rating": [4.5] * n,
        "rating_count": [100.0] * n})


def _judgments() -> pd.DataFrame:
    return pd.DataFrame({"query": ["running shoes", "running shoes", "socks"], "product_id": ["P0", "P1", "P2"],
                         "grade": [3, 2, 0]})


def test_missing_column_names_it() -> None:
    with pytest.raises(SchemaError, match=r"'title'"):
        PRODUCTS.validate(_products().drop(columns=["title"]))


def test_wrong_dtype_names_column_and_fix() -> None:
    bad = _judgments().assign(grade=["3", "2", "0"])
    with pytest.raises(SchemaError, match=r"column 'grade' must be int.*Fix"):
        JUDGMENTS.validate(bad)
    with pytest.raises(SchemaError, match=r"column 'price' must be numeric"):
        PRODUCTS.validate(_products().assign(price=["cheap"] * 3))


@pytest.mark.parametrize("grade", [4, -1])
def test_grade_out_of_range(grade: int) -> None:
    with pytest.raises(SchemaError, match=r"column 'grade' has values (above 3|below 0)"):
        JUDGMENTS.validate(_judgments().assign(grade=[grade, 2, 0]))


def test_duplicate_key() -> None:
    dup = pd.concat([_judgments(), _judgments().iloc[:1]])
    with pytest.raises(SchemaError, match=r"duplicate key.*\['query', 'product_id'\]"):
        JUDGMENTS.validate(dup)


def test_not_nullable_and_fractional_int() -> None:
    with pytest.raises(SchemaError, match=r"column 'title' has 1 missing"):
        PRODUCTS.validate(_products().assign(title=["a", None, "c"]))
    with pytest.raises(SchemaError, match=r"column 'grade' must hold whole numbers"):
        JUDGMENTS.validate(_judgments().assign(grade=[2.5, 2.0, 0.0]))


def test_round_trip_and_byte_identical(tmp_path) -> None:
    p = write_table(_products(), tmp_path / "a" / "products.parquet", PRODUCTS)
    back = read_table(tmp_path / "a" / "products.parquet", PRODUCTS)
    pd.testing.assert_frame_equal(p, back)
    write_table(_products(), tmp_path / "b" / "products.parquet", PRODUCTS)
    assert (tmp_path / "a" / "products.parquet").read_bytes() == (tmp_path / "b" / "products.parquet").read_bytes()
    imps = pd.DataFrame({"request_id": ["r1", "r1"], "ts": pd.to_datetime(["2026-09-01 10:00", "2026-09-01 10:00"]),
                         "query_id": [query_id("x")] * 2, "product_id": ["P0", "P1"], "position": [1, 2],
                         "clicked": [True, False], "added_to_cart": [False, False], "purchased": [False, False]})
    write_table(imps, tmp_path / "imps.parquet", IMPRESSIONS)
    back = read_table(tmp_path / "imps.parquet", IMPRESSIONS)
    assert str(back["ts"].dt.tz) == "UTC" and back["position"].tolist() == [1, 2]


def test_validated_on_read_and_state_untouched(tmp_path) -> None:
    # a file written around the contract is caught when it is read
    _judgments().assign(grade=[9, 2, 0]).to_parquet(tmp_path / "judgments.parquet")
    with pytest.raises(SchemaError, match="grade"):
        read_table(tmp_path / "judgments.parquet", JUDGMENTS)
    # a rejected write leaves the previous good file in place
    good = tmp_path / "good.parquet"
    write_table(_judgments(), good, JUDGMENTS)
    before = good.read_bytes()
    with pytest.raises(SchemaError):
        write_table(_judgments().assign(grade=[7, 2, 0]), good, JUDGMENTS)
    assert good.read_bytes() == before


def test_dataset_load_errors(tmp_path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        Dataset.load(tmp_path / "nope")
    write_table(_products(), tmp_path / "products.parquet", PRODUCTS)
    with pytest.raises(DatasetError, match="judgments.parquet"):
        Dataset.load(tmp_path)
    write_table(_judgments(), tmp_path / "judgments.parquet", JUDGMENTS)
    ds = Dataset.load(tmp_path)
    assert set(ds.queries["query_id"]) == {query_id("running shoes"), query_id("socks")}
