"""`show-tell`: the student project's baseline (Vinyals et al., 2015).

The mean feature of a segment (all regions of all frames) starts an LSTM that writes
morphemes; the image is not looked at again.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import CaptionModel, ModelConfig, masked_mean


class ShowTell(CaptionModel):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.feat_in = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.feature_dim, c.hidden_dim))
        self.init_h = nn.Linear(c.hidden_dim, c.hidden_dim)
        self.init_c = nn.Linear(c.hidden_dim, c.hidden_dim)
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim, padding_idx=0)
        self.lstm = nn.LSTMCell(c.embed_dim, c.hidden_dim)
        self.drop = nn.Dropout(c.dropout)
        self.out = nn.Linear(c.hidden_dim, c.vocab_size)

    def prepare(self, feats, frame_mask, style=None):
        v = torch.relu(self.feat_in(masked_mean(feats, frame_mask)))
        return None, (torch.tanh(self.init_h(v)), torch.tanh(self.init_c(v)))

    def step(self, tokens, state, memory):
        h, c = self.lstm(self.embed(tokens), state)
        return self.out(self.drop(h)), (h, c)
