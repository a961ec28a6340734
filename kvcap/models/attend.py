"""`attend`: an LSTM that looks at the segment while it writes (Xu et al., 2015, extended to video).

At every word the decoder scores all R regions of all T frames of the segment against
its state and reads their softmax-weighted sum. One softmax over the T x R regions is
spatial attention inside each frame times temporal attention over frames: a frame's
weight is the attention mass its regions receive, so a segment is read where its
content is, not as its mean frame. A gate (from the state) decides how much of the
visual context enters each step, since particles and endings need none.

Two optional inputs (see ModelConfig):
- attributes (`classes`): the encoder's own ImageNet classifier, trained on 1.2M
  photos, says what kind of thing is in the picture ('tabby cat', 'sports car'); its
  class probabilities, averaged over frames, start the LSTM and bias every word, so a
  decoder trained on 15k photos can still name what the classifier recognises (LSTM-A,
  Yao et al. 2017).
- styles (`sources`, `general`): one learned vector per training dataset, since the
  datasets describe pictures differently (Flickr8k: people in action; koscenes: objects
  and places). A small head predicts the dataset a picture looks like and its style is
  used, so a sentence never mixes the two ('한 남자가 탁자 위에 놓여 있다'). "general" is the
  style of short, general captions, used when the model is unsure.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import CaptionModel, ModelConfig


class Attend(CaptionModel):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.feat_drop = nn.Dropout(c.dropout)
        self.feat_proj = nn.Linear(c.feature_dim, c.hidden_dim)
        self.att_feat = nn.Linear(c.hidden_dim, c.attn_dim)
        self.att_state = nn.Linear(c.hidden_dim, c.attn_dim)
        self.att_score = nn.Linear(c.attn_dim, 1)
        self.gate = nn.Linear(c.hidden_dim, c.hidden_dim)
        self.init_h = nn.Linear(c.hidden_dim, c.hidden_dim)
        self.init_c = nn.Linear(c.hidden_dim, c.hidden_dim)
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=0)
        self.lstm = nn.LSTMCell(c.embed_dim + c.hidden_dim, c.hidden_dim)
        self.drop = nn.Dropout(c.dropout)
        self.ctx_out = nn.Linear(c.hidden_dim, c.hidden_dim)
        self.out = nn.Linear(c.hidden_dim, c.vocab_size)
        if c.classes:
            # the frozen ImageNet head (filled from the encoder's weights before training)
            self.register_buffer("cls_weight", torch.zeros(c.classes, c.feature_dim))
            self.register_buffer("cls_bias", torch.zeros(c.classes))
            self.attr_in = nn.Sequential(nn.Dropout(c.dropout / 2), nn.Linear(c.classes, c.hidden_dim))
        if c.n_styles:
            self.style = nn.Embedding(c.n_styles, c.hidden_dim)
            self.source_head = nn.Linear(c.hidden_dim, len(c.sources))

    def class_probs(self, feats, frame_mask):
        """ImageNet class probabilities of a segment: (B, T, R, D) -> (B, classes)."""
        logits = feats.mean(dim=2) @ self.cls_weight.T + self.cls_bias  # (B, T, C): the network's own pool + fc
        w = frame_mask.to(logits.dtype).unsqueeze(-1)
        return (torch.softmax(logits, dim=-1) * w).sum(1) / w.sum(1).clamp(min=1.0)

    def _pooled(self, feats, frame_mask):
        b, t, r, d = feats.shape
        v = torch.relu(self.feat_proj(self.feat_drop(feats.reshape(b, t * r, d))))  # (B, N, H)
        region_mask = frame_mask.unsqueeze(-1).expand(b, t, r).reshape(b, t * r)
        w = region_mask.to(v.dtype).unsqueeze(-1)
        return v, region_mask, (v * w).sum(1) / w.sum(1).clamp(min=1.0)

    def source_logits(self, mean):
        """Which training dataset a segment looks like (trained beside the captions)."""
        return self.source_head(mean)

    def prepare(self, feats, frame_mask, style=None):
        v, region_mask, mean = self._pooled(feats, frame_mask)
        keys = self.att_feat(v)  # (B, N, A), computed once per segment
        bias = torch.zeros_like(mean)
        if self.config.classes:
            bias = bias + torch.relu(self.attr_in(self.class_probs(feats, frame_mask)))
        if self.config.n_styles:
            own = self.source_logits(mean).argmax(-1)
            style = own if style is None else torch.where(style < 0, own, style)  # < 0: the model's choice
            bias = bias + self.style(style)
        start = mean + bias
        state = (torch.tanh(self.init_h(start)), torch.tanh(self.init_c(start)))
        return (v, keys, region_mask, bias, mean), state

    def attend(self, h, memory):
        v, keys, region_mask = memory[:3]
        # memory is kept once per segment; h may hold k beams per segment (consecutive rows):
        # each segment's regions are then read once for all its beams, as one small matmul
        s, n = keys.shape[:2]
        k = h.size(0) // s
        # (S, k, N, A) is the largest tensor of a step: made once, squashed in place, then
        # scored, instead of three such tensors per word
        energy = keys.unsqueeze(1) + self.att_state(h).view(s, k, 1, -1)
        scores = energy.tanh_() @ self.att_score.weight.squeeze(0) + self.att_score.bias
        scores = scores.masked_fill(~region_mask.unsqueeze(1), float("-inf"))
        alpha = torch.softmax(scores, dim=-1)  # (S, k, N)
        ctx = torch.bmm(alpha, v).view(h.size(0), -1)
        return ctx * torch.sigmoid(self.gate(h)), alpha.view(h.size(0), n)

    def step(self, tokens, state, memory):
        h, c = state
        ctx, _ = self.attend(h, memory)
        h, c = self.lstm(torch.cat([self.embed(tokens), ctx], dim=-1), (h, c))
        bias = memory[3]
        if bias.size(0) != h.size(0):  # one per segment, k beams each
            bias = bias.repeat_interleave(h.size(0) // bias.size(0), dim=0)
        logits = self.out(self.drop(torch.tanh(h + self.ctx_out(ctx) + bias)))
        return logits, (h, c)
