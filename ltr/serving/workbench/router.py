"""The workbench's HTTP routes: one server-rendered page, the JSON it and scripts read, one write.

Every input is checked before any work, with the service's 422 shape naming the field (`loc`); the only
write is POST /workbench/api/labels, allowed with the token in the `X-Workbench-Token` header (a header, not
a cookie, so another site's form cannot send it), and it goes nowhere but the label store.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Header, Query
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_json

from .core import Workbench
from .ranking import RIGHTS

HERE = Path(__file__).parent
TOKEN_HEADER = "X-Workbench-Token"
# no script but our own files; inline styles only for Plotly's SVG; images from the catalog's http(s) URLs
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' https: http: data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cache-Control": "no-store"}

Right = Literal["challenger", "bienc", "bm25"]
QueryText = Annotated[str, Query(min_length=1, max_length=1000, description="the search text")]


class LabelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(..., min_length=1, max_length=1000)
    product_id: str = Field(..., min_length=1, max_length=200)
    grade: int = Field(..., strict=True, ge=0, le=3, description="0 irrelevant .. 3 exact (ESCI I/C/S/E)")
    who: str = Field("workbench", min_length=1, max_length=100, description="who corrects, as they sign")
    note: str | None = Field(None, max_length=1000)


def problem(loc: list[str], msg: str, status: int = 422, kind: str = "value_error") -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": [{"loc": loc, "msg": msg, "type": kind}]})


def _json(body: Any) -> HTMLResponse:
    return HTMLResponse(to_json(body, inf_nan_mode="null"), media_type="application/json", headers=HEADERS)


def _auth(wb: Workbench, sent: str | None) -> JSONResponse | None:
    loc = ["header", TOKEN_HEADER]
    if not wb.writable:
        why = "no label store (start with --run-dir)" if wb.store is None else "no token configured"
        return problem(loc, f"the workbench is read-only: {why}. Fix: start it with --token or "
                       "LTR_WORKBENCH_TOKEN.", 403, "read_only")
    if not sent:
        return problem(loc, f"writing labels needs the token. Fix: send it in the {TOKEN_HEADER} header.", 401,
                       "missing_token")
    if not wb.token_ok(sent):
        return problem(loc, "the token is wrong. Fix: use the one the workbench was started with.", 403,
                       "bad_token")
    return None


def _compare_problem(wb: Workbench, query: str, right: str) -> JSONResponse | None:
    if not query.strip():
        return problem(["query", "query"], "query is blank. Fix: type a search.")
    if right == "challenger" and wb.state.challenger is None:
        return problem(["query", "right"], "no challenger is loaded. Fix: pick right=bienc or right=bm25, or "
                       "start the service with --challenger.")
    return None


def _label_problem(wb: Workbench, body: LabelBody) -> JSONResponse | None:
    if body.product_id not in wb.state.known:
        return problem(["body", "product_id"], f"product_id {body.product_id[:60]!r} is not in the catalog. "
                       "Fix: send a catalog product id.")
    if not body.query.strip():
        return problem(["body", "query"], "query is blank. Fix: send the search text the grade is for.")
    return None


def build_router(wb: Workbench) -> APIRouter:
    from jinja2 import Environment, FileSystemLoader

    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)  # every {{ }} escaped
    page = env.get_template("workbench.html")
    r = APIRouter(prefix="/workbench")

    @r.get("", response_class=HTMLResponse)
    def workbench(query: Annotated[str | None, Query(max_length=1000)] = None, right: Right | None = None,
                  n: Annotated[int, Query(ge=1, le=100)] = 20):
        right = right or ("challenger" if wb.state.challenger is not None else "bienc")
        view = None
        if query and query.strip():
            bad = _compare_problem(wb, query, right)
            if bad is not None:
                return bad
            view = wb.compare(query.strip(), right, n)
        html = page.render(view=view, query=query or "", right=right, rights=RIGHTS, triage=wb.triage(),
                           has_challenger=wb.state.challenger is not None, writable=wb.writable,
                           pareto=wb.pareto(), version=wb.state.live.version)
        return HTMLResponse(html, headers=HEADERS)

    @r.get("/api/queries")
    def queries():
        return _json(wb.triage())

    @r.get("/api/compare")
    def compare(query: QueryText, right: Right = "challenger", n: Annotated[int, Query(ge=1, le=100)] = 20):
        bad = _compare_problem(wb, query, right)
        return bad if bad is not None else _json(wb.compare(query.strip(), right, n))

    @r.get("/api/pareto")
    def pareto():
        return _json(wb.pareto())

    @r.post("/api/labels")
    def label(body: LabelBody, token: Annotated[str | None, Header(alias=TOKEN_HEADER)] = None):
        bad = _auth(wb, token) or _label_problem(wb, body)
        if bad is not None:
            return bad
        from labels.human import HumanLabelError
        try:
            rec = wb.add_label(body.query.strip(), body.product_id, body.grade, f"workbench:{body.who}", body.note)
        except HumanLabelError as e:
            return problem(["body", getattr(e, "field", None) or "grade"], str(e))
        return _json({"stored": rec, "human": {"grade": rec["grade"], "source": "human", "who": rec["who"],
                                               "at": rec["at"]}})

    @r.get("/static/plotly.min.js")
    def plotly_js():
        import plotly
        return FileResponse(Path(plotly.__file__).parent / "package_data" / "plotly.min.js",
                            media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    return r


def mount(app: FastAPI, wb: Workbench) -> None:
    app.include_router(build_router(wb))
    app.mount("/workbench/static", StaticFiles(directory=HERE / "static"), name="workbench-static")


__all__ = ["CSP", "LabelBody", "TOKEN_HEADER", "build_router", "mount", "problem"]
