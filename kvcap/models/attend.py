"""`attend`: an LSTM that looks at the segment while it writes (Xu et al., 2015, extended to video).

At every word the decoder scores all R regions of all T frames of the segment against
its state and reads their softmax-weighted sum. One softmax over the T x R regions is
spatial attention inside each frame times temporal attention over frames: a frame's
weight is the attention mass its regions receive, so a segment is read where its
content is, not as its mean frame. A gate (from the state) decides how much of the
visual context enters each step, since particles and endings need none.
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

    def prepare(self, feats, frame_mask):
        b, t, r, d = feats.shape
        v = torch.relu(self.feat_proj(self.feat_drop(feats.reshape(b, t * r, d))))  # (B, N, H)
        keys = self.att_feat(v)  # (B, N, A), computed once per segment
        region_mask = frame_mask.unsqueeze(-1).expand(b, t, r).reshape(b, t * r)
        w = region_mask.to(v.dtype).unsqueeze(-1)
        mean = (v * w).sum(1) / w.sum(1).clamp(min=1.0)
        state = (torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean)))
        return (v, keys, region_mask), state

    def attend(self, h, memory):
        v, keys, region_mask = memory
        scores = self.att_score(torch.tanh(keys + self.att_state(h).unsqueeze(1))).squeeze(-1)
        scores = scores.masked_fill(~region_mask, float("-inf"))
        alpha = torch.softmax(scores, dim=-1)  # (B, N)
        ctx = torch.bmm(alpha.unsqueeze(1), v).squeeze(1)
        return ctx * torch.sigmoid(self.gate(h)), alpha

    def step(self, tokens, state, memory):
        h, c = state
        ctx, _ = self.attend(h, memory)
        h, c = self.lstm(torch.cat([self.embed(tokens), ctx], dim=-1), (h, c))
        logits = self.out(self.drop(torch.tanh(h + self.ctx_out(ctx))))
        return logits, (h, c)
