"""Real search logs in: OpenSearch User Behavior Insights (UBI) -> the dataset's impressions table.

UBI is the open standard for search logs: one `ubi_queries` document per search (its `query_id` is the
request; `user_query` the text; optionally `query_response_hit_ids`, the ids shown) and `ubi_events`
documents for what the shopper did (`action_name`, the request's `query_id`, the product in
`event_attributes.object.object_id`, its 0-based rank in `event_attributes.position.ordinal`). Here an
impression is a shown (request, product) pair: an impression event, or else a hit id of a request that
logged no impression events; clicks, add-to-cart and purchases are the events whose `action_name` the
mapping (`UbiConfig.actions`) names, joined to the impression of the same (request, product).

Why a report and not silent drops: a real log is messy (products the catalog does not know, events of
requests whose impressions were never logged, clocks that wrote garbage), and a rate computed after
dropping rows silently is a rate of an unknown population. Every input document is either used or
counted under the reason it could not be, so the counts always add up to the input. Bad files (not JSON,
not UTF-8, no UBI document at all) raise before anything is written; the impressions (and the queries
they add) are validated before either file is replaced.

Inputs: OpenSearch bulk NDJSON (an `{"index": {"_index": "ubi_events"}}` line before each document),
plain NDJSON (each document classified by its fields), or parquet (one table of either kind; nested
`event_attributes` or dotted column names). Engagement from a generator (as in the shared sample) is
marked simulated with `simulated=True`, and every report then says so.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field, model_validator

from .config import StrictConfig
from .dataset import DatasetError, derive_queries, read_table, update_metadata, with_query_ids, write_table
from .schemas import IMPRESSIONS, JUDGMENTS, PRODUCTS, QUERIES, query_id

Outcome = Literal["click", "add_to_cart", "purchase"]
OUTCOME_COLUMN = {"click": "clicked", "add_to_cart": "added_to_cart", "purchase": "purchased"}
SUFFIXES = (".ndjson", ".jsonl", ".json", ".parquet")


class UbiError(DatasetError):
    """A UBI file cannot be read or yields nothing usable; the message names the file and the fix."""


class UbiConfig(StrictConfig):
    """Which `action_name`s are impressions and which are clicks / add-to-cart / purchases."""

    impression_actions: list[str] = Field(default_factory=lambda: ["impression"], min_length=1)
    actions: dict[str, Outcome] = Field(
        default_factory=lambda: {"click": "click", "item_click": "click", "add_to_cart": "add_to_cart",
                                 "purchase": "purchase"},
        description="action_name -> click | add_to_cart | purchase; other actions are counted as unmapped")

    @model_validator(mode="after")
    def _disjoint(self) -> UbiConfig:
        both = sorted(set(self.impression_actions) & set(self.actions))
        if both:
            raise ValueError(f"action(s) {both} are both impressions and outcomes. Fix: map each action_name once.")
        return self


@dataclass
class UbiLog:
    """The documents of one or more UBI files, split into queries and events, with per-file counts."""

    queries: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)  # documents that are neither (other index, unknown shape)


# --- reading ---------------------------------------------------------------------------------------

def _files(sources: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix in SUFFIXES and f.is_file())
            if not found:
                raise UbiError(f"{p}: no UBI file in this folder. Fix: put ubi_queries / ubi_events as "
                               f"{', '.join(SUFFIXES)} files there, or pass the files themselves.")
            out += found
        elif p.is_file():
            if p.suffix not in SUFFIXES:
                raise UbiError(f"{p}: unsupported file type '{p.suffix}'. Fix: use NDJSON (.ndjson/.jsonl/.json, "
                               "plain or OpenSearch bulk) or .parquet.")
            out.append(p)
        else:
            raise UbiError(f"{p}: no such file or folder. Fix: pass the path of the UBI export.")
    if not out:
        raise UbiError("no UBI source given. Fix: pass --src FILE_OR_DIR (repeatable).")
    return out


def _json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of every non-blank line; the first bad line raises naming it."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UbiError(f"{path}: not UTF-8 text (byte offset {e.start}). Fix: export the logs as UTF-8 NDJSON.") \
            from None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise UbiError(f"{path} line {n}: not JSON ({e.msg}). Fix: one JSON document per line "
                           "(NDJSON), as OpenSearch's _bulk export writes it.") from None


def _kind(doc: dict[str, Any]) -> str | None:
    if "action_name" in doc:
        return "events"
    if "user_query" in doc or "query_response_hit_ids" in doc:
        return "queries"
    return None


def _bulk_target(doc: Any) -> str | None | bool:
    """For a bulk action line, the UBI kind its document belongs to (None: another index); False otherwise."""
    if not (isinstance(doc, dict) and len(doc) == 1):
        return False
    (action, meta), = doc.items()
    if action not in ("index", "create", "update", "delete") or not isinstance(meta, dict):
        return False
    index = str(meta.get("_index", ""))
    return "events" if "ubi_events" in index else "queries" if "ubi_queries" in index else None


def _read_ndjson(path: Path, log: UbiLog) -> Counter:
    counts: Counter = Counter()
    lines = _json_lines(path)
    for n, doc in lines:
        target = _bulk_target(doc)
        if target is not False:
            if "delete" in doc:
                log.skipped["bulk delete action"] += 1
                continue
            nxt = next(lines, None)
            if nxt is None or not isinstance(nxt[1], dict):
                raise UbiError(f"{path} line {n}: a bulk action line without its document. Fix: every "
                               "{\"index\": ...} line must be followed by the document.")
            doc = nxt[1].get("doc", nxt[1]) if "update" in doc else nxt[1]
        else:
            target = _kind(doc) if isinstance(doc, dict) else None
        if target is None:
            log.skipped["not a ubi_queries or ubi_events document"] += 1
            continue
        getattr(log, target).append(doc)
        counts[target] += 1
    return counts


def _read_parquet(path: Path, log: UbiLog) -> Counter:
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - pyarrow's error types vary
        raise UbiError(f"{path}: not a readable parquet file ({type(e).__name__}). Fix: re-export it.") from None
    target = _kind(dict.fromkeys(df.columns))
    if target is None:
        raise UbiError(f"{path}: neither ubi_queries (user_query) nor ubi_events (action_name) columns. Fix: "
                       "export the ubi_queries or ubi_events index with its fields.")
    docs = [{k: v for k, v in r.items() if not _missing(v)} for r in df.to_dict("records")]
    getattr(log, target).extend(docs)
    return Counter({target: len(docs)})


def read_ubi(sources: Iterable[str | Path]) -> UbiLog:
    """Every UBI document of `sources` (files or folders); raises UbiError on the first bad file."""
    log = UbiLog()
    for f in _files(sources):
        counts = _read_parquet(f, log) if f.suffix == ".parquet" else _read_ndjson(f, log)
        log.files[str(f)] = {"ubi_queries": counts["queries"], "ubi_events": counts["events"]}
    if not log.queries and not log.events:
        raise UbiError(f"no ubi_queries or ubi_events document in {', '.join(log.files)}. Fix: pass the UBI "
                       "export (OpenSearch bulk NDJSON, plain NDJSON or parquet).")
    return log


# --- fields ------------------------------------------------------------------------------------------

def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _get(doc: dict[str, Any], dotted: str) -> Any:
    """A nested field (`event_attributes.position.ordinal`), also as a flattened column or a JSON string."""
    if dotted in doc:
        return doc[dotted]
    cur: Any = doc
    for part in dotted.split("."):
        if isinstance(cur, str) and cur.startswith("{"):
            try:
                cur = json.loads(cur)
            except json.JSONDecodeError:
                return None
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return None if _missing(cur) else cur


def parse_timestamp(v: Any) -> pd.Timestamp | None:
    """UTC timestamp of an ISO-8601 string or epoch milliseconds (seconds below 1e11); None when unusable."""
    try:
        if isinstance(v, bool) or _missing(v):
            return None
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v.strip())
        if isinstance(v, (int, float)):
            return pd.Timestamp(v, unit="ms" if abs(v) >= 1e11 else "s", tz="UTC")
        if isinstance(v, (str, datetime)):
            t = pd.Timestamp(v)
            return None if pd.isna(t) else (t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC"))
    except (ValueError, OverflowError, TypeError):
        return None
    return None


def _ordinal(v: Any) -> int | None:
    if isinstance(v, bool) or _missing(v):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() and f >= 0 else None


def _text(v: Any) -> str | None:
    return v.strip() if isinstance(v, str) and v.strip() else None


# --- joining -------------------------------------------------------------------------------------------

@dataclass
class _Request:
    text: str | None
    ts: pd.Timestamp | None
    hits: list[str]


def _requests(queries: list[dict[str, Any]], unused: Counter) -> dict[str, _Request]:
    """ubi_queries by request id (UBI's query_id). A search engine may log several response documents for
    one request (hits, then aggregations): a later one fills what the first lacked (text, time, hit ids)
    and is counted under "merged"; one that adds nothing, or has no id, is counted as unused."""
    out: dict[str, _Request] = {}
    for doc in queries:
        rid = _text(str(doc["query_id"])) if not _missing(doc.get("query_id")) else None
        if rid is None:
            unused["no query_id"] += 1
            continue
        hits = doc.get("query_response_hit_ids")
        hits = [str(h) for h in hits] if isinstance(hits, (list, tuple)) or hasattr(hits, "tolist") else []
        req = _Request(_text(doc.get("user_query")), parse_timestamp(doc.get("timestamp")), hits)
        cur = out.get(rid)
        if cur is None:
            out[rid] = req
        elif (not cur.hits and req.hits) or (cur.text is None and req.text) or (cur.ts is None and req.ts):
            cur.hits, cur.text, cur.ts = cur.hits or req.hits, cur.text or req.text, cur.ts or req.ts
            unused["merged"] += 1
        else:
            unused["duplicate query_id"] += 1
    return out


def _event_problem(doc: dict[str, Any], products: set[str]) -> str | None:
    """Why an impression or outcome event cannot be used on its own (None: it can)."""
    if _missing(doc.get("query_id")):
        return "no query_id"
    obj = _get(doc, "event_attributes.object.object_id")
    if obj is None:
        return "no object_id"
    if parse_timestamp(doc.get("timestamp")) is None:
        return "bad timestamp"
    if str(obj) not in products:
        return "unknown product"
    return None


def _impression_row(doc: dict[str, Any], req: _Request | None) -> dict[str, Any] | str:
    """The impression of an impression event, or why there is none."""
    pid = str(_get(doc, "event_attributes.object.object_id"))
    text = (req.text if req else None) or _text(doc.get("user_query"))
    if text is None:
        return "query without text"
    ordinal = _ordinal(_get(doc, "event_attributes.position.ordinal"))
    if ordinal is None and req is not None and pid in req.hits:
        ordinal = req.hits.index(pid)
    if ordinal is None:
        return "no position"
    return {"request_id": str(doc["query_id"]), "ts": parse_timestamp(doc["timestamp"]), "query": text,
            "product_id": pid, "position": ordinal + 1, "source": "impression event"}


def _hit_rows(reqs: dict[str, _Request], shown: set[str], products: set[str],
              unused_hits: Counter) -> list[dict[str, Any]]:
    """Impressions of requests that logged hit ids but no impression events (position = rank in the hits)."""
    rows = []
    for rid, req in reqs.items():
        if rid in shown or not req.hits:
            continue
        if req.ts is None or req.text is None:
            unused_hits["bad timestamp" if req.ts is None else "query without text"] += len(req.hits)
            continue
        for i, pid in enumerate(req.hits):
            if pid not in products:
                unused_hits["unknown product"] += 1
                continue
            rows.append({"request_id": rid, "ts": req.ts, "query": req.text, "product_id": pid, "position": i + 1,
                         "source": "query_response_hit_ids"})
    return rows


def _impressions(log: UbiLog, cfg: UbiConfig, products: set[str], reqs: dict[str, _Request],
                 unused: Counter, unused_hits: Counter) -> dict[tuple[str, str], dict[str, Any]]:
    """(request, product) -> impression row: impression events first, then hit ids of silent requests."""
    imps: dict[tuple[str, str], dict[str, Any]] = {}
    for doc in log.events:
        if doc.get("action_name") not in cfg.impression_actions:
            continue
        problem = _event_problem(doc, products)
        row = _impression_row(doc, reqs.get(str(doc["query_id"]))) if problem is None else problem
        if isinstance(row, str):
            unused[row] += 1
        elif (row["request_id"], row["product_id"]) in imps:
            unused["duplicate impression"] += 1
        else:
            imps[(row["request_id"], row["product_id"])] = row
    shown = {rid for rid, _ in imps}
    for row in _hit_rows(reqs, shown, products, unused_hits):
        imps.setdefault((row["request_id"], row["product_id"]), row)
    return imps


def _outcomes(log: UbiLog, cfg: UbiConfig, products: set[str], imps: dict[tuple[str, str], dict[str, Any]],
              unused: Counter, unmapped: Counter) -> Counter:
    """Set clicked / added_to_cart / purchased on the impressions the mapped events belong to."""
    joined: Counter = Counter()
    for doc in log.events:
        action = doc.get("action_name")
        if action in cfg.impression_actions:
            continue
        if action not in cfg.actions:
            unmapped[str(action)] += 1
            continue
        problem = _event_problem(doc, products)
        key = (str(doc.get("query_id")), str(_get(doc, "event_attributes.object.object_id")))
        if problem is None and key not in imps:
            problem = "event without impression"
        if problem is not None:
            unused[problem] += 1
            continue
        imps[key][OUTCOME_COLUMN[cfg.actions[action]]] = True
        joined[cfg.actions[action]] += 1
    return joined


def ubi_impressions(log: UbiLog, products: Iterable[str], cfg: UbiConfig | None = None
                    ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The IMPRESSIONS table of a UBI log over a catalog, and the report of what was joined and what not."""
    cfg = cfg or UbiConfig()
    products = set(map(str, products))
    unused_q, unused_ev, unused_hits, unmapped = Counter(), Counter(), Counter(), Counter()
    reqs = _requests(log.queries, unused_q)
    merged = unused_q.pop("merged", 0)
    imps = _impressions(log, cfg, products, reqs, unused_ev, unused_hits)
    joined = _outcomes(log, cfg, products, imps, unused_ev, unmapped)
    df = pd.DataFrame(list(imps.values()), columns=["request_id", "ts", "query", "product_id", "position", "source",
                                                    *OUTCOME_COLUMN.values()])
    for c in OUTCOME_COLUMN.values():
        df[c] = df[c].notna()  # set (True) only where a mapped event joined
    df["query_id"] = [query_id(q) for q in df["query"]]
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    df["position"] = df["position"].astype("int64")
    df = df.sort_values(["ts", "request_id", "position"], kind="stable").reset_index(drop=True)
    with_imp = set(df["request_id"])
    n_imp_events = int((df["source"] == "impression event").sum())
    report = {
        "input": {"ubi_queries": len(log.queries), "ubi_events": len(log.events), "files": log.files,
                  "other_documents": dict(log.skipped)},
        "joined": {"impressions": len(df), "from_impression_events": n_imp_events,
                   "from_query_response_hit_ids": len(df) - n_imp_events, "requests": len(with_imp),
                   "queries": int(df["query_id"].nunique()), "clicks": joined["click"],
                   "add_to_cart": joined["add_to_cart"], "purchases": joined["purchase"]},
        "unused_events": dict(sorted(unused_ev.items())),
        "unmapped_actions": dict(sorted(unmapped.items())),
        "unused_queries": dict(sorted(unused_q.items())),
        "query_documents_merged": merged,
        "queries_without_impressions": sum(1 for r in reqs if r not in with_imp),
        "unused_hit_ids": dict(sorted(unused_hits.items())),
    }
    return df, report


def _dataset_queries(root: Path, imps: pd.DataFrame) -> tuple[pd.DataFrame | None, int]:
    """(the dataset's queries plus the logged ones it lacks, how many were added): features need every
    impressed query's text. None when nothing is new. Existing texts win over other spellings of an id."""
    if (root / "queries.parquet").exists():
        have = read_table(root / "queries.parquet", QUERIES)
    elif (root / "judgments.parquet").exists():
        have = derive_queries(with_query_ids(read_table(root / "judgments.parquet", JUDGMENTS)))
    else:
        have = QUERIES.validate(pd.DataFrame({"query_id": pd.Series([], dtype=object),
                                              "query": pd.Series([], dtype=object)}))
    new = imps[~imps["query_id"].isin(set(have["query_id"]))][["query_id", "query"]].drop_duplicates("query_id")
    if new.empty:
        return None, 0
    out = pd.concat([have, new], ignore_index=True).sort_values("query_id", kind="stable").reset_index(drop=True)
    return QUERIES.validate(out, where="queries with the UBI log's queries"), len(new)


def _with_existing(root: Path, new: pd.DataFrame, report: dict[str, Any]) -> pd.DataFrame:
    """The dataset's impressions followed by `new`, validated as one table before anything is written."""
    path = root / "impressions.parquet"
    if not path.exists():
        report["joined"]["appended_to"] = 0
        return new
    old = read_table(path, IMPRESSIONS)
    again = new[["request_id"]].drop_duplicates().merge(old[["request_id"]].drop_duplicates())
    if len(again):
        raise UbiError(f"{len(again)} request id(s) of these logs are already in {path} (e.g. "
                       f"{again['request_id'].iloc[0]!r}): these logs were ingested before. Fix: append only "
                       "new logs, or pass --overwrite with the whole history.")
    report["joined"]["appended_to"] = len(old)
    return IMPRESSIONS.validate(pd.concat([old, new], ignore_index=True), where="impressions with the UBI log's")


def ingest_ubi(sources: Iterable[str | Path], dataset_dir: str | Path, cfg: UbiConfig | None = None,
               overwrite: bool = False, simulated: bool = False, append: bool = False) -> dict[str, Any]:
    """Turn UBI logs into DATASET/impressions.parquet (and add their queries); returns the report, also
    stored in metadata.json under "ubi". Nothing is written unless every table validates and at least one
    impression was joined. simulated: the engagement was generated (e.g. by OpenSearch's UBI data
    generator), so every report says simulated. append: a shop's new day of logs extends its history (the
    engagement windows need the old days); a request already in the log is refused, not counted twice."""
    root = Path(dataset_dir)
    if not (root / "products.parquet").exists():
        raise UbiError(f"{root}: no products.parquet. Fix: pass --dataset DIR of a dataset (its catalog decides "
                       "which logged products are known), e.g. one written by `ltr load-esci`.")
    if overwrite and append:
        raise UbiError("--overwrite and --append contradict each other. Fix: pass one of them.")
    if (root / "impressions.parquet").exists() and not (overwrite or append):
        raise UbiError(f"{root}/impressions.parquet already exists. Fix: pass --append to add these logs to it, "
                       "--overwrite to replace it, or ingest into a copy of the dataset.")
    products = read_table(root / "products.parquet", PRODUCTS, nonempty=True)
    log = read_ubi(sources)
    df, report = ubi_impressions(log, products["product_id"], cfg)
    if df.empty:
        raise UbiError(f"no impression could be joined from {len(log.events)} event(s) "
                       f"(unused: {report['unused_events'] or 'none'}). Fix: check that the logs' object_id "
                       "values are this catalog's product_id and that impression events are mapped "
                       "(--impression-action).")
    imps = _with_existing(root, IMPRESSIONS.validate(df, where="UBI impressions"), report) if append else \
        IMPRESSIONS.validate(df, where="UBI impressions")
    queries, n_new = _dataset_queries(root, df)
    report["joined"]["queries_new_to_dataset"] = n_new
    if queries is not None:  # both tables validated above: neither write can be refused half-way
        write_table(queries, root / "queries.parquet", QUERIES)
    write_table(imps, root / "impressions.parquet", IMPRESSIONS)
    report["simulated_engagement"] = bool(simulated)
    update_metadata(root, simulated_engagement=bool(simulated), engagement_source="ubi", ubi=report)
    return report


__all__ = ["UbiConfig", "UbiError", "UbiLog", "ingest_ubi", "parse_timestamp", "read_ubi", "ubi_impressions"]
