"""The workbench's one object: what a page needs, from the live service, the run directory and the label
store, and the one write it allows (a human grade, through labels.human).

A correction is shown as the human grade at once and on every later view: the label store's latest grade
of a pair wins over the dataset's judgment, which wins over nothing. Each correction records what it
replaced and where that came from (`replaces`, `replaces_source`), so a reviewer can undo a bad session.
"""
from __future__ import annotations

import hmac
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ltr.data.schemas import query_id

from .ranking import BASELINES, bars, moves, ndcg10, rank_by_feature, rank_model
from .runinfo import ENGAGEMENT, LOW_CONTENT_GRADE, RunInfo, polarized

TOKEN_ENV = "LTR_WORKBENCH_TOKEN"
TRIAGE_N = 15
RETRIEVE_N = 50  # candidates of a query the run never saw: BM25 over the catalog
_NO_ROWS = pd.DataFrame(columns=["product_id", "grade", "who", "at"])


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _human_row(r: dict[str, Any]) -> dict[str, Any]:
    return {"grade": int(r["grade"]), "source": "human", "who": r.get("who"),
            "at": str(r["at"]) if r.get("at") is not None else None}


def _safe_image(url: Any) -> str | None:
    """Only http(s) images: a catalog cell holding `javascript:` or `data:` is shown as no image."""
    if isinstance(url, str) and url.lower().startswith(("https://", "http://")):
        return url
    return None


class Workbench:
    def __init__(self, state: Any, run_dir: str | Path | None = None, token: str | None = None) -> None:
        self.state, self.info = state, RunInfo.load(run_dir)
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        self.store = None
        if run_dir is not None:
            from labels.human import HumanLabels, human_store_path
            self.store = HumanLabels(human_store_path(run_dir))
        prods = state.live.ondemand.products
        cols = [c for c in ("product_id", "title", "image_url") if c in prods.columns]
        self.catalog = prods[cols].drop_duplicates("product_id").set_index("product_id")
        self._write_lock = threading.Lock()
        self._orders: dict[tuple, list[dict[str, Any]]] = {}  # (model version, query) -> ranked, for triage
        self._bm25 = None
        self._triage: tuple | None = None

    # --- who may write ------------------------------------------------------------------------------
    @property
    def writable(self) -> bool:
        return bool(self.token) and self.store is not None

    def token_ok(self, sent: str | None) -> bool:
        return bool(self.token) and sent is not None and hmac.compare_digest(sent.encode(), self.token.encode())

    # --- grades -------------------------------------------------------------------------------------
    def human(self, qid: str, corrections: pd.DataFrame | None = None) -> dict[str, dict[str, Any]]:
        """product -> {grade, source, who, at}: the label store's latest over the dataset's judgments.
        `corrections`: the store's rows of this query when the caller has read them already."""
        out = {p: {"grade": g, "source": "judgments", "who": None, "at": None}
               for p, g in self.info.judged(qid).items()}
        if self.store is not None:
            rows = self.store.history(query_id=qid) if corrections is None else corrections
            for r in rows.to_dict("records"):  # oldest first: the last row of a pair wins
                out[r["product_id"]] = _human_row(r)
        return out

    # --- rankings -----------------------------------------------------------------------------------
    def candidates(self, query: str) -> list[str]:
        ids = [p for p in self.info.candidates(query) if p in self.state.known]
        if ids:
            return ids
        if self._bm25 is None:
            from ltr.retrieval.retrievers import BM25Retriever, top_k
            self._bm25 = (BM25Retriever(self.state.live.ondemand.products), top_k)
        bm25, top_k = self._bm25
        prods = self.state.live.ondemand.products["product_id"].to_numpy()
        return [str(p) for p in prods[top_k(bm25.scores(query), RETRIEVE_N, positive_only=True)]]

    def ranked(self, which: str, query: str, ids: list[str], left: list[dict] | None = None) -> list[dict] | None:
        if which in BASELINES:
            return rank_by_feature(left or [], BASELINES[which])
        live = self.state.live if which == "champion" else self.state.challenger
        return None if live is None else rank_model(self.state, live, query, ids)

    def compare(self, query: str, right: str, n: int = 20) -> dict[str, Any]:
        """The page's data for one query: the champion and `right`, each result with everything shown."""
        qid, ids = query_id(query), self.candidates(query)
        left = self.ranked("champion", query, ids) if ids else []
        other = self.ranked(right, query, ids, left) if ids else []
        human = self.human(qid)
        grades = {p: h["grade"] for p, h in human.items()}
        pairs = self.info.pairs(qid)
        lo, ro = [r["product_id"] for r in left], [r["product_id"] for r in other or []]
        sides = []
        for name, rows, order, ref in (("champion", left, lo, ro), (right, other, ro, lo)):
            mv = moves(ref, order) if rows is not None else {}
            sides.append({"name": name, "available": rows is not None, "version": self._version(name),
                          "ndcg10": ndcg10(order, grades), "model": name not in BASELINES,
                          "results": [self.item(r, k, pairs, human, mv.get(r["product_id"]))
                                      for k, r in enumerate((rows or [])[:n], 1)]})
        return {"query": query, "query_id": qid, "right": right, "n_candidates": len(ids),
                "judged": bool(grades), "left": sides[0], "right_side": sides[1]}

    def _version(self, name: str) -> str | None:
        live = self.state.live if name == "champion" else self.state.challenger if name == "challenger" else None
        return None if live is None else live.version

    def item(self, r: dict[str, Any], rank: int, pairs: pd.DataFrame, human: dict, move: int | None) -> dict:
        p = r["product_id"]
        row = pairs.loc[p].to_dict() if p in pairs.index else {}
        cat = self.catalog.loc[p].to_dict() if p in self.catalog.index else {}
        e, h = r["explain"], human.get(p)
        llm_score = _num(row.get("llm_score"))
        return {"product_id": p, "rank": rank, "score": r["score"], "phase": r["phase"], "move": move,
                "title": str(cat.get("title") or p), "image_url": _safe_image(cat.get("image_url")),
                "llm_grade": None if _num(row.get("llm_grade")) is None else int(row["llm_grade"]),
                "llm_score": llm_score, "polarized": polarized(llm_score, self.info.label_transform()),
                "human": h, "engagement": {k: _num(row.get(k)) for k in ENGAGEMENT},
                "bars": bars(e), "explain": None if e is None else {
                    "bias": e["bias"], "margin": e["margin"], "scorer": e["scorer"], "groups": e["groups"],
                    "contributions": e["contributions"]}}

    # --- where to look first ------------------------------------------------------------------------
    def triage(self) -> dict[str, list[dict[str, Any]]]:
        """Judged queries three ways: LLM vs human disagreement, NDCG@10 lost against the zero-shot
        bi-encoder, clicks on products the LLM grades low. Recomputed only when the model or the label
        store changed (every page view shows it)."""
        key = (self.state.live.version, None if self.store is None else tuple(self.store.state().values()))
        if self._triage is None or self._triage[0] != key:
            self._triage = (key, self._triage_now())
        return self._triage[1]

    def _triage_now(self) -> dict[str, list[dict[str, Any]]]:
        latest = self.store.latest() if self.store is not None else pd.DataFrame(columns=["query_id"])
        by_q = dict(tuple(latest.groupby("query_id"))) if len(latest) else {}
        rows = [r for qid in self.info.judged_query_ids() if (r := self._triage_row(qid, by_q)) is not None]
        return {key: sorted([r for r in rows if r[key] is not None and r[key] > 0],
                            key=lambda r: (-r[key], r["query"]))[:TRIAGE_N]
                for key in ("disagreement", "ndcg_loss", "low_grade_clicks")}

    def _triage_row(self, qid: str, corrections: dict[str, pd.DataFrame]) -> dict[str, Any] | None:
        text = self.info.text_of(qid)
        if text is None:
            return None
        pairs = self.info.pairs(qid)
        grades = {p: h["grade"] for p, h in self.human(qid, corrections.get(qid, _NO_ROWS)).items()}
        llm = pairs["llm_grade"].dropna() if "llm_grade" in pairs else pd.Series(dtype=float)
        both = [abs(g - llm[p]) for p, g in grades.items() if p in llm.index]
        left = self._cached_order(text)
        bienc = rank_by_feature(left, BASELINES["bienc"])
        champ = ndcg10([r["product_id"] for r in left], grades)
        zero = None if bienc is None else ndcg10([r["product_id"] for r in bienc], grades)
        clicks = float(pairs.loc[llm.index[llm <= LOW_CONTENT_GRADE], "clicks"].fillna(0).sum()) \
            if "clicks" in pairs else 0.0
        return {"query": text, "query_id": qid, "disagreement": round(float(np.mean(both)), 3) if both else None,
                "ndcg_loss": None if champ is None or zero is None else round(zero - champ, 4),
                "low_grade_clicks": clicks}

    def _cached_order(self, text: str) -> list[dict[str, Any]]:
        key = (self.state.live.version, text)
        if key not in self._orders:
            ids = self.candidates(text)
            self._orders[key] = self.ranked("champion", text, ids) if ids else []
        return self._orders[key]

    # --- the Pareto front ---------------------------------------------------------------------------
    def pareto(self) -> dict[str, Any]:
        t, op = self.info.trials, self.info.operating_point
        if not len(t) or not {"content", "engagement"} <= set(t.columns):
            return {"points": [], "operating_blend": None}
        blend = t["params_blend_weight"] if "params_blend_weight" in t else pd.Series(np.nan, index=t.index)
        pts = [{"number": int(n), "content": _num(c), "engagement": _num(e), "blend_weight": _num(b),
                "pareto": bool(p)} for n, c, e, b, p in zip(t["number"], t["content"], t["engagement"], blend,
                                                           t.get("pareto", pd.Series(True, index=t.index)))]
        return {"points": pts, "operating_blend": _num(op.get("blend_weight"))}

    # --- the one write ------------------------------------------------------------------------------
    def add_label(self, query: str, product_id: str, grade: int, who: str, note: str | None) -> dict[str, Any]:
        """Store a human grade with what it replaces; serialised so two corrections never interleave."""
        qid = query_id(query)
        with self._write_lock:
            before = self._before(qid, product_id)
            rec = self.store.add(query, product_id, grade, who,
                                 replaces=None if before is None else before[0],
                                 replaces_source=None if before is None else before[1],
                                 note=note, known_products=self.state.known)
        return rec

    def _before(self, qid: str, product_id: str) -> tuple[float, str] | None:
        """The grade shown before this correction and its source: the pair's last correction, else the
        dataset's judgment, else the LLM's grade."""
        mine = self.store.history(query_id=qid, product_id=product_id)
        if len(mine):
            return float(mine["grade"].iloc[-1]), "human"
        row = self.info.pairs(qid)
        row = row.loc[product_id] if product_id in row.index else {}
        for col, source in (("human_grade", "judgments"), ("llm_grade", "llm")):
            v = _num(row.get(col)) if len(row) else None
            if v is not None:
                return v, source
        return None


__all__ = ["TOKEN_ENV", "Workbench"]
