"""Plural folding for term matching ("headphones" meets "headphone"): deliberately tiny rules, no stemmer.

Two rule sets live here because two fitted things depend on them and must not drift: `fold_plural` is the
catalog rule of the lexical features (features/lexical.py: -ies -> -y, -xes/-ches/-shes/-sses -> drop -es,
-s -> drop -s), and `fold_plural_grader` is the rule the fine-tuned grader's lexical inputs were fitted with
(labels/lexical.py: -es -> drop unless -ses, -s -> drop). Changing either changes what a fitted model
sees; a new rule gets a new name here, never an in-place edit.
"""
from __future__ import annotations


def fold_plural(t: str) -> str:
    """Catalog rule: shoes -> shoe, boxes -> box, batteries -> battery, glass stays glass."""
    if len(t) > 4 and t.endswith("ies"):
        return t[:-3] + "y"
    if len(t) > 4 and t.endswith(("xes", "ches", "shes", "sses")):
        return t[:-2]
    if len(t) > 3 and t.endswith("s") and not t.endswith("ss"):
        return t[:-1]
    return t


def fold_plural_grader(t: str) -> str:
    """The grader's rule (grader format 2): shoes -> sho, boxes -> box, glasses stays -> glasse."""
    if len(t) > 3 and t.endswith("es") and not t.endswith("ses"):
        return t[:-2]
    if len(t) > 3 and t.endswith("s") and not t.endswith("ss"):
        return t[:-1]
    return t
