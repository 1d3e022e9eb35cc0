"""Segment-cosine cross-encoder head: one joint pass, score = scale * cos(query part, product part) + bias.

Why: the all-MiniLM-L6-v2 checkpoint was trained as a *bi*-encoder (mean-pooled, cosine), so its [CLS]
state after a joint "[CLS] query [SEP] product [SEP]" pass carries almost no relevance signal, and a
fresh [CLS] head cannot learn one in a CPU budget (measured: random-level held-out NDCG). Mean-pooling
the query-segment and the product-segment token states of the *same* joint pass and comparing them by
cosine starts close to the bi-encoder's ranking, and fine-tuning only has to improve on it. The joint
pass still lets query and product tokens attend to each other (in the top layers; the bottom
`segment_local_layers` layers can be restricted to within-segment attention so they reproduce the
bi-encoder's contextualisation). An optional [CLS] linear head, initialised at 0, adds a residual.

This file only imports torch and transformers: `save_pretrained` copies it next to the weights with an
`auto_map`, so `AutoModelForSequenceClassification` / sentence-transformers' `CrossEncoder` load the
model with `trust_remote_code=True`; our own `CrossEncoderScorer` imports the class directly instead.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

HEAD_NAME = "segment_cosine"


def segments_from_ids(input_ids: torch.Tensor, sep_token_id: int) -> torch.Tensor:
    """Token types when the caller gave none: 0 up to and including the first [SEP], 1 after it."""
    is_sep = (input_ids == sep_token_id).long()
    return ((is_sep.cumsum(1) - is_sep) > 0).long()


def additive_mask(attention_mask: torch.Tensor, segments: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, L, L) additive mask: keys must be real tokens and, when `segments` is given, in the
    query token's own segment (within-segment attention)."""
    keep = attention_mask[:, None, None, :].bool()
    if segments is not None:
        keep = keep & (segments[:, None, :, None] == segments[:, None, None, :])
    zero = torch.zeros((), dtype=dtype)
    return torch.where(keep, zero, torch.full((), torch.finfo(dtype).min, dtype=dtype))


class BertSegmentCosineForSequenceClassification(BertPreTrainedModel):
    """BERT encoder + segment-cosine relevance head (1 logit), loadable as a sequence classifier.

    Extra config keys: ltr_head ("segment_cosine"), segment_local_layers (bottom layers with
    within-segment attention), segment_token_types (feed token_type_ids to the embeddings; False feeds
    zeros, as the bi-encoder saw), cos_scale_init, cls_residual (add a [CLS] linear head, init 0).
    """

    config_class = BertConfig

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        config.num_labels = 1
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cos_scale = nn.Parameter(torch.tensor(float(getattr(config, "cos_scale_init", 20.0))))
        self.cos_bias = nn.Parameter(torch.tensor(0.0))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 1) if getattr(config, "cls_residual", False) else None
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is getattr(self, "classifier", None):  # residual starts at exactly 0
            module.weight.zero_()
            module.bias.zero_()
        if isinstance(module, BertSegmentCosineForSequenceClassification):
            module.cos_scale.fill_(float(getattr(module.config, "cos_scale_init", 20.0)))
            module.cos_bias.zero_()

    # -- pieces, so training can cache the frozen bottom and run only the top -------------------
    def segments(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        if token_type_ids is not None:
            return token_type_ids.long()
        return segments_from_ids(input_ids, int(getattr(self.config, "sep_token_id", None) or 102))

    def embed(self, input_ids: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        tt = segments if getattr(self.config, "segment_token_types", True) else torch.zeros_like(segments)
        return self.bert.embeddings(input_ids=input_ids, token_type_ids=tt)

    def run_layers(self, h: torch.Tensor, attention_mask: torch.Tensor, segments: torch.Tensor,
                   start: int = 0, end: int | None = None) -> torch.Tensor:
        layers = self.bert.encoder.layer
        end = len(layers) if end is None else end
        n_local = int(getattr(self.config, "segment_local_layers", 0))
        full = local = None
        for i in range(start, end):
            if i < n_local:
                local = additive_mask(attention_mask, segments, h.dtype) if local is None else local
                m = local
            else:
                full = additive_mask(attention_mask, None, h.dtype) if full is None else full
                m = full
            out = layers[i](h, attention_mask=m)
            h = out[0] if isinstance(out, tuple) else out
        return h

    def head(self, h: torch.Tensor, attention_mask: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """(B,) logits from final token states."""
        m = attention_mask.to(h.dtype)
        mq = (m * (segments == 0).to(h.dtype)).unsqueeze(-1)
        mp = (m * (segments == 1).to(h.dtype)).unsqueeze(-1)
        q = (h * mq).sum(1) / mq.sum(1).clamp(min=1e-9)
        p = (h * mp).sum(1) / mp.sum(1).clamp(min=1e-9)
        cos = nn.functional.cosine_similarity(q, p, dim=-1, eps=1e-8)
        logit = self.cos_scale.to(h.dtype) * cos + self.cos_bias.to(h.dtype)
        if self.classifier is not None:
            logit = logit + self.classifier(self.dropout(h[:, 0]))[:, 0]
        return logit

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **kwargs) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        seg = self.segments(input_ids, token_type_ids)
        h = self.run_layers(self.embed(input_ids, seg), attention_mask, seg)
        logits = self.head(h, attention_mask, seg)[:, None]
        loss = None
        if labels is not None:
            loss = nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.to(logits.dtype))
        return SequenceClassifierOutput(loss=loss, logits=logits)


__all__ = ["HEAD_NAME", "BertSegmentCosineForSequenceClassification", "additive_mask", "segments_from_ids"]
