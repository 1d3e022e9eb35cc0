"""Versioned UMBRELA-style grading prompts.

The prompt version is part of every label's provenance and of the cache key, so changing a template
means bumping its version (old grades stay valid for the old version and are never mixed in).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ltr.data.product_text import PROMPT_LAYOUT, clean_text, render

GRADE_SCALE = {
    3: "Exact: the product is what the query asks for and satisfies every stated attribute.",
    2: "Substitute: close to the intent but misses an attribute (brand, size, colour, model...).",
    1: "Complement: not what was asked for but used together with it (an accessory, a part).",
    0: "Irrelevant: unrelated to the query's intent.",
}


def product_block(product: Mapping[str, Any], max_description_chars: int = 300,
                  max_bullet_chars: int = 400) -> str:
    """The product as the grader sees it: title, brand, colour, category, bullets, truncated description."""
    return render(product, PROMPT_LAYOUT.with_budget(max_bullet_chars=max_bullet_chars,
                                                     max_description_chars=max_description_chars))


@dataclass(frozen=True)
class PromptTemplate:
    version: str
    system: str
    user: str

    def messages(self, query: str, product: Mapping[str, Any]) -> list[dict[str, str]]:
        """OpenAI chat messages for one (query, product) pair."""
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": self.user.format(query=clean_text(query), product=product_block(product))}]


_SCALE_TEXT = "\n".join(f"{g} = {t}" for g, t in sorted(GRADE_SCALE.items(), reverse=True))

UMBRELA_V1 = PromptTemplate(
    version="umbrela-esci-v1",
    system=("You are a search quality rater for an online shop. You judge how relevant a product is "
            "to a shopper's search query."),
    user=("Search query: {query}\n\nProduct:\n{product}\n\n"
          "Work through these steps silently:\n"
          "1. Intent: what is the shopper looking for (product type, brand, attributes)?\n"
          "2. Match: how well does the product match that intent, attribute by attribute?\n"
          "3. Final score on this scale:\n" + _SCALE_TEXT + "\n\n"
          "Answer with the final score only, a single digit 0, 1, 2 or 3."),
)

PROMPTS: dict[str, PromptTemplate] = {UMBRELA_V1.version: UMBRELA_V1}
DEFAULT_PROMPT_VERSION = UMBRELA_V1.version


def get_prompt(version: str) -> PromptTemplate:
    try:
        return PROMPTS[version]
    except KeyError:
        raise ValueError(f"unknown prompt_version {version!r}. Fix: use one of {sorted(PROMPTS)}.") from None
