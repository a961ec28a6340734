"""Caption search: batched beam search (greedy is a beam of one) over any `CaptionModel`.

- Length penalty (GNMT): a hypothesis is ranked by  log p / ((5 + len) / 6) ** alpha,
  so longer, more specific captions are not punished just for having more words.
- Repeated n-grams inside a sentence are blocked ('남자가 남자가 …').
- The score returned per caption is the geometric mean of its token probabilities
  (0..1), comparable across captions of different lengths.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .models.base import CaptionModel


@dataclass
class Hypothesis:
    ids: list[int]
    logprob: float
    rank: float  # length-penalised log prob, for choosing among hypotheses

    @property
    def score(self) -> float:
        n = max(1, len(self.ids) + 1)  # + <eos>
        return float(torch.tensor(self.logprob / n).exp())


def _length_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


def _banned(ids: list[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram already in `ids`."""
    if n <= 0 or len(ids) < n - 1:
        return []
    prefix = ids[len(ids) - n + 1 :] if n > 1 else []
    return [ids[i + n - 1] for i in range(len(ids) - n + 1) if ids[i : i + n - 1] == prefix]


def beam_search(model: CaptionModel, feats: torch.Tensor, frame_mask: torch.Tensor, **kw) -> list[Hypothesis]:
    """Best hypothesis for each of the B segments in `feats` (B, T, R, D)."""
    return [pool[0] for pool in beam_search_nbest(model, feats, frame_mask, **kw)]


@torch.inference_mode()
def beam_search_nbest(
    model: CaptionModel,
    feats: torch.Tensor,
    frame_mask: torch.Tensor,
    *,
    bos_id: int,
    eos_id: int,
    banned_ids: tuple[int, ...] = (),
    beam: int = 3,
    max_len: int = 30,
    length_penalty: float = 0.7,
    no_repeat_ngram: int = 4,
    style: torch.Tensor | None = None,
    item_banned: Sequence[Sequence[int]] | None = None,
) -> list[list[Hypothesis]]:
    """Every finished hypothesis of each of the B segments, best first (at least one each).

    `style` (B,) picks the caption style of models that have styles (None: the model's own
    choice per segment). `item_banned` lists, per segment, tokens never to write there
    (beside `banned_ids`, which holds for all).
    """
    model.eval()
    b = feats.size(0)
    k = max(1, beam)
    memory, state = model.prepare(feats, frame_mask, style)
    state = model.select(state, torch.arange(b).repeat_interleave(k))  # memory stays one per segment

    never = torch.zeros(b * k, model.config.vocab_size, dtype=torch.bool)
    never[:, list(banned_ids)] = True
    for i, ids in enumerate(item_banned or ()):
        never[i * k : (i + 1) * k, list(ids)] = True
    tokens = torch.full((b * k,), bos_id, dtype=torch.long)
    beam_logp = torch.full((b, k), float("-inf"))
    beam_logp[:, 0] = 0.0  # all beams start identical: keep one
    beam_ids: list[list[int]] = [[] for _ in range(b * k)]
    finished: list[list[Hypothesis]] = [[] for _ in range(b)]
    # the segments still searched, in row order: live[p] owns rows p*k .. p*k+k-1; a finished
    # one keeps its (padding) rows until enough have finished to make dropping them pay
    live = list(range(b))
    done = [False] * b

    for step in range(max_len):
        logits, state = model.step(tokens, state, memory)
        logp = torch.log_softmax(logits.float(), dim=-1).masked_fill_(never, float("-inf"))
        if step == 0:
            logp[:, eos_id] = float("-inf")  # no empty captions
        for row, ids in enumerate(beam_ids):
            bad = _banned(ids, no_repeat_ngram)
            if bad:
                logp[row, bad] = float("-inf")
        vocab = logp.size(-1)
        cand = (beam_logp.view(-1, 1) + logp).view(len(live), k * vocab)
        top_logp, top_idx = cand.topk(min(2 * k, cand.size(1)), dim=-1)

        next_rows, next_tokens, next_logp, next_ids = [], [], [], []
        for p, i in enumerate(live):
            kept = 0
            for lp, flat in zip(top_logp[p].tolist(), top_idx[p].tolist()):
                src, tok = divmod(flat, vocab)
                row = p * k + src
                if lp == float("-inf") or done[i]:
                    break
                if tok == eos_id:
                    ids = beam_ids[row]
                    finished[i].append(Hypothesis(ids, lp, lp / _length_penalty(len(ids) + 1, length_penalty)))
                    continue
                next_rows.append(row)
                next_tokens.append(tok)
                next_logp.append(lp)
                next_ids.append(beam_ids[row] + [tok])
                kept += 1
                if kept == k:
                    break
            while kept < k:  # pad a segment whose beams ran out (or that is done)
                next_rows.append(p * k)
                next_tokens.append(eos_id)
                next_logp.append(float("-inf"))
                next_ids.append([])
                kept += 1
            if len(finished[i]) >= k:
                done[i] = True
        if all(done):
            break
        keep = [p for p, i in enumerate(live) if not done[i]]
        if len(keep) <= 0.75 * len(live):  # a quarter or more of the rows finished: drop them
            rows = [p * k + j for p in keep for j in range(k)]
            next_rows, next_tokens, next_logp, next_ids = ([xs[r] for r in rows] for xs in
                                                           (next_rows, next_tokens, next_logp, next_ids))
            memory = model.select(memory, torch.tensor(keep))  # memory: one per live segment
            never = never.index_select(0, torch.tensor(rows))
            live = [live[p] for p in keep]
        state = model.select(state, torch.tensor(next_rows))
        tokens = torch.tensor(next_tokens)
        beam_logp = torch.tensor(next_logp).view(len(live), k)
        for p, i in enumerate(live):
            if done[i]:
                beam_logp[p] = float("-inf")
        beam_ids = next_ids

    best: list[list[Hypothesis]] = []
    for i in range(b):
        pool = list(finished[i])
        if not pool and i in live:  # hit max_len without <eos>: take the live beams as they are
            p = live.index(i)
            for j in range(k):
                lp = float(beam_logp[p, j])
                if lp > float("-inf"):
                    ids = beam_ids[p * k + j]
                    pool.append(Hypothesis(ids, lp, lp / _length_penalty(len(ids), length_penalty)))
        pool.sort(key=lambda h: -h.rank)
        best.append(pool or [Hypothesis([], float("-inf"), float("-inf"))])
    return best
