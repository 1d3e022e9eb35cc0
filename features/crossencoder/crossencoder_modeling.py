"""Segment-cosine cross-encoder head: one joint pass, score = scale * cos(query part, product part) + bias.

Why: the all-MiniLM-L6-v2 checkpoint was trained as a *bi*-encoder (mean-pooled, cosine), so its [CLS]
state after a joint "[CLS] query [SEP] product [SEP]" pass carries almost no relevance signal, and a
fresh [CLS] head cannot learn one in a CPU budget (measured: random-level held-out NDCG). Mean-pooling
the query-segment and the product-segment token states of the *same* joint pass and comparing them by
cosine starts close to the bi-encoder's ranking, and fine-tuning only has to improve on it. The joint
pass still lets query and product tokens attend to each other (in the top layers; the bottom
`segment_local_layers` layers can be restricted to within-segment attention so they reproduce the
bi-encoder's contextualisation). An optional [CLS] linear head, initialised at 0, adds a residual.
`segment_own_cls` lays each segment out as the bi-encoder saw it alone (its own [CLS], positions from 0),
and `cross_gate_init` adds a learnt per-head bias on query<->product attention: local layers everywhere
then reproduce the bi-encoder exactly, and a gate near -4 starts the joint pass close to it.

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
        gate = getattr(config, "cross_gate_init", None)
        n_local = int(getattr(config, "segment_local_layers", 0))
        self.cross_gate = None if gate is None else nn.ParameterList(  # one per cross-attending layer
            nn.Parameter(torch.full((config.num_attention_heads,), float(gate)))
            for _ in range(n_local, config.num_hidden_layers))
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
            for g in module.cross_gate if module.cross_gate is not None else ():
                g.fill_(float(module.config.cross_gate_init))

    # -- pieces, so training can cache the frozen bottom and run only the top -------------------
    def segments(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        if token_type_ids is not None:
            return token_type_ids.long()
        return segments_from_ids(input_ids, int(getattr(self.config, "sep_token_id", None) or 102))

    def layout(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, segments: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(input_ids, attention_mask, segments, position_ids) as the layers see them.

        With `segment_own_cls`, a [CLS] is inserted before the product segment and positions restart
        there, so each segment is laid out exactly as the bi-encoder saw it alone ("[CLS] q [SEP]",
        "[CLS] p [SEP]"): with within-segment attention everywhere the model *is* the bi-encoder.
        Tensor ops only (gather/where), so the ONNX export traces it.
        """
        if not getattr(self.config, "segment_own_cls", False):
            return input_ids, attention_mask, segments, None
        width = input_ids.shape[1]
        pos = torch.arange(width + 1, device=input_ids.device)[None, :]
        n0 = ((segments == 0) & attention_mask.bool()).sum(1, keepdim=True)  # [CLS] q [SEP] length
        src = torch.where(pos <= n0, pos, pos - 1).clamp(max=width - 1).expand(input_ids.shape[0], -1)
        at_cls = pos == n0
        cls_id = int(getattr(self.config, "cls_token_id", None) or 101)
        ids = torch.where(at_cls, torch.full_like(src, cls_id), torch.gather(input_ids, 1, src))
        mask = torch.where(at_cls, torch.ones_like(src), torch.gather(attention_mask.long(), 1, src))
        seg = (pos >= n0).long().expand_as(ids)
        return ids, mask, seg, torch.where(pos < n0, pos, pos - n0)

    def embed(self, input_ids: torch.Tensor, segments: torch.Tensor,
              position_ids: torch.Tensor | None = None) -> torch.Tensor:
        tt = segments if getattr(self.config, "segment_token_types", True) else torch.zeros_like(segments)
        return self.bert.embeddings(input_ids=input_ids, token_type_ids=tt, position_ids=position_ids)

    def run_layers(self, h: torch.Tensor, attention_mask: torch.Tensor, segments: torch.Tensor,
                   start: int = 0, end: int | None = None) -> torch.Tensor:
        layers = self.bert.encoder.layer
        end = len(layers) if end is None else end
        n_local = int(getattr(self.config, "segment_local_layers", 0))
        full = local = cross = None
        for i in range(start, end):
            if i < n_local:
                local = additive_mask(attention_mask, segments, h.dtype) if local is None else local
                m = local
            else:
                full = additive_mask(attention_mask, None, h.dtype) if full is None else full
                m = full
                if self.cross_gate is not None:  # learnt per-head bias on query<->product attention
                    if cross is None:
                        cross = (segments[:, None, :, None] != segments[:, None, None, :]).to(h.dtype)
                    m = m + cross * self.cross_gate[i - n_local].to(h.dtype)[None, :, None, None]
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
        ids, attention_mask, seg, pos = self.layout(input_ids, attention_mask, self.segments(input_ids, token_type_ids))
        h = self.run_layers(self.embed(ids, seg, pos), attention_mask, seg)
        logits = self.head(h, attention_mask, seg)[:, None]
        loss = None
        if labels is not None:
            loss = nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.to(logits.dtype))
        return SequenceClassifierOutput(loss=loss, logits=logits)


__all__ = ["HEAD_NAME", "BertSegmentCosineForSequenceClassification", "additive_mask", "segments_from_ids"]
