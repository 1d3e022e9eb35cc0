"""Local causal-LM backend: the next-token distribution over the grade tokens "0".."3", batched.

A transformers model directory is scored directly from its logits (one forward pass per batch, left
padding, no sampling). A `.gguf` file is run through llama-cpp-python when it is installed (its
OpenAI-style chat completion with logprobs is parsed like the HTTP backend).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..prompts import DEFAULT_PROMPT_VERSION, get_prompt
from .base import Backend, LabelerError, LabelResult, OnResult, Pair


def _grade_token_ids(tok) -> list[list[int]]:
    """Token ids that spell each grade alone ("2", " 2"); single-token spellings only."""
    ids: list[list[int]] = []
    for g in "0123":
        cand = set()
        for s in (g, " " + g):
            enc = tok.encode(s, add_special_tokens=False)
            if len(enc) == 1:
                cand.add(enc[0])
        if not cand:
            raise LabelerError(f"the tokenizer has no single token for grade {g!r}. Fix: use a model whose "
                               "vocabulary has digit tokens.")
        ids.append(sorted(cand))
    return ids


class CausalLMBackend(Backend):
    name = "causal_lm"

    def __init__(self, path: str | Path, prompt_version: str | None = None, batch_size: int = 8,
                 max_length: int = 512, num_threads: int = 2):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"causal_lm.path {self.path} does not exist. Fix: point it at a local "
                                    "transformers model directory or a .gguf file.")
        self.prompt = get_prompt(prompt_version or DEFAULT_PROMPT_VERSION)
        self.prompt_version = self.prompt.version
        self.batch_size, self.max_length = batch_size, max_length
        self.model = self.path.name
        self._gguf = self.path.suffix == ".gguf"
        if self._gguf:
            try:
                from llama_cpp import Llama
            except ImportError as e:
                raise LabelerError("a .gguf model needs llama-cpp-python. Fix: pip install 'llama-cpp-python' "
                                   "(compiles for ~8 min) or use a transformers model directory.") from e
            self.llm = Llama(model_path=str(self.path), n_ctx=2048, logits_all=True, verbose=False)
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        torch.set_num_threads(num_threads)
        self.tok = AutoTokenizer.from_pretrained(str(self.path))
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token or self.tok.unk_token
        self.lm = AutoModelForCausalLM.from_pretrained(str(self.path))
        self.lm.eval()
        self.grade_ids = _grade_token_ids(self.tok)

    def _text(self, pair: Pair) -> str:
        msgs = self.prompt.messages(pair.query, pair.product)
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in msgs) + "\n\nFinal score:"

    def _probs_hf(self, pairs: Sequence[Pair]) -> np.ndarray:
        import torch
        enc = self.tok([self._text(p) for p in pairs], return_tensors="pt", padding=True, truncation=True,
                       max_length=self.max_length, add_special_tokens=False)
        with torch.inference_mode():
            logits = self.lm(**enc).logits[:, -1, :].float()
        p = torch.softmax(logits, -1).numpy()
        mass = np.stack([p[:, ids].sum(1) for ids in self.grade_ids], 1)
        return mass / np.clip(mass.sum(1, keepdims=True), 1e-30, None)

    def _probs_gguf(self, pair: Pair) -> tuple[float, ...]:
        from .openai import parse_grade
        body: Any = self.llm.create_chat_completion(messages=self.prompt.messages(pair.query, pair.product),
                                                    max_tokens=2, temperature=0.0, logprobs=True, top_logprobs=10)
        return parse_grade(body)[0]

    def grade(self, pairs: Sequence[Pair], on_result: OnResult | None = None) -> list[LabelResult]:
        out: list[LabelResult] = []
        for i in range(0, len(pairs), self.batch_size):
            chunk = pairs[i:i + self.batch_size]
            probs = [self._probs_gguf(p) for p in chunk] if self._gguf else self._probs_hf(chunk)
            for pair, pr in zip(chunk, probs):
                r = LabelResult(pair.query_id, pair.product_id, tuple(float(x) for x in pr), self.name,
                                self.model, self.prompt_version)
                out.append(r)
                if on_result:
                    on_result(pair, r)
        return out
