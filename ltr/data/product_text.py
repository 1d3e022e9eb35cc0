"""How a product row becomes text: one renderer, one layout per reader.

Three readers see a product, and each needs a different string: the LLM prompt (labelled lines, the long
fields cut at a word boundary), the cross-/bi-encoder (fields joined by " | ", the decisive ones first
because encoders truncate from the end) and the grader's short text (what fits in ~64 tokens). They used
to be three hand-written functions with three copies of the cleaning rule; here each is a declared
`TextLayout` and all go through `render`, so a new field or a fix to cleaning lands everywhere at once.
Layouts are part of model and cache identity: changing one changes what models were trained on.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

#: product text fields in decisive-first order (also the fields of ltr.data.schemas.product_text_hash)
TEXT_FIELDS: tuple[str, ...] = ("title", "brand", "color", "category", "bullet_points", "description")


def clean_text(v: Any) -> str:
    """A cell as one line of text: missing -> "", whitespace runs collapsed."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return " ".join(str(v).split())


def _cut_at_word(text: str, n_chars: int) -> str:
    return text if len(text) <= n_chars else text[:n_chars].rsplit(" ", 1)[0] + " ..."


@dataclass(frozen=True)
class TextLayout:
    """Which fields, in which order, labelled how, cut where, joined by what."""

    fields: tuple[str, ...]
    sep: str
    labels: Mapping[str, str] = field(default_factory=dict)  # field -> "Label" (absent: the bare value)
    max_chars: Mapping[str, int] = field(default_factory=dict)  # field -> character budget
    cut_at_word: bool = False  # cut at a word boundary and mark the cut with " ..." (else a hard cut)
    always: tuple[str, ...] = ()  # fields rendered even when empty
    category_leaf: bool = False  # "A > B > C" -> "C"

    def __post_init__(self) -> None:
        bad = [f for f in self.fields if f not in TEXT_FIELDS]
        if bad:
            raise ValueError(f"unknown product text field(s) {bad}. Fix: use a subset of {list(TEXT_FIELDS)}.")

    def with_budget(self, fields: Iterable[str] | None = None, **max_chars: int) -> TextLayout:
        """This layout with other fields and/or character budgets (e.g. max_description_chars=200)."""
        budgets = dict(self.max_chars)
        for k, v in max_chars.items():
            name = k.removeprefix("max_").removesuffix("_chars")
            name = "bullet_points" if name == "bullet" else name
            if name not in TEXT_FIELDS:
                raise ValueError(f"unknown budget {k!r}. Fix: use max_<field>_chars with a field of {TEXT_FIELDS}.")
            budgets[name] = int(v)
        return replace(self, fields=tuple(fields) if fields is not None else self.fields, max_chars=budgets)


def render(product: Mapping[str, Any], layout: TextLayout) -> str:
    """The product as `layout` says; empty fields are skipped unless the layout always shows them."""
    get = product.get if hasattr(product, "get") else (lambda _k: None)
    parts: list[str] = []
    for f in layout.fields:
        v = clean_text(get(f))
        if f == "category" and layout.category_leaf:
            v = v.split(" > ")[-1]
        if not v and f not in layout.always:
            continue
        if f in layout.max_chars:
            n = layout.max_chars[f]
            v = _cut_at_word(v, n) if layout.cut_at_word else v[:n]
        parts.append(f"{layout.labels[f]}: {v}" if f in layout.labels else v)
    return layout.sep.join(parts)


#: the LLM prompt's product block
PROMPT_LAYOUT = TextLayout(
    fields=TEXT_FIELDS, sep="\n", always=("title",), cut_at_word=True,
    labels={"title": "Title", "brand": "Brand", "color": "Color", "category": "Category",
            "bullet_points": "Bullet points", "description": "Description"},
    max_chars={"bullet_points": 400, "description": 300})
#: cross-encoder and bi-encoder input
ENCODER_LAYOUT = TextLayout(
    fields=TEXT_FIELDS, sep=" | ", labels={"brand": "Brand", "color": "Color", "category": "Category"},
    max_chars={"bullet_points": 300, "description": 200})
#: the grader's short product text
GRADER_LAYOUT = TextLayout(fields=("title", "brand", "color", "category"), sep=" | ", category_leaf=True)


def product_text(row: Mapping[str, Any], fields: Iterable[str] = TEXT_FIELDS, max_bullet_chars: int = 300,
                 max_description_chars: int = 200) -> str:
    """Encoder input for one product, e.g. ``"Kindle ... | Brand: Amazon | Color: Black | ..."``."""
    layout = ENCODER_LAYOUT.with_budget(fields, max_bullet_chars=max_bullet_chars,
                                        max_description_chars=max_description_chars)
    return render(row, layout)
