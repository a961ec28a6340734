"""Stage 5: the decoders, beam search, and model folders."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kvcap import modelfile
from kvcap.captions import pad_segments
from kvcap.decoding import _banned, beam_search
from kvcap.errors import KvcapError
from kvcap.korean import Vocab
from kvcap.models import ModelConfig, build


def small(arch: str, vocab: int = 40) -> torch.nn.Module:
    torch.manual_seed(0)
    return build(ModelConfig(arch=arch, vocab_size=vocab, embed_dim=16, hidden_dim=32, attn_dim=16, max_len=12)).eval()


@pytest.mark.parametrize("arch", ["show-tell", "attend"])
def test_forward_shapes_and_padding_frames_do_not_matter(arch):
    model = small(arch)
    one = np.random.default_rng(0).normal(size=(1, 49, 1280)).astype(np.float32)
    three = np.random.default_rng(1).normal(size=(3, 49, 1280)).astype(np.float32)
    feats, mask = pad_segments([one, three])
    assert feats.shape == (2, 3, 49, 1280) and mask.tolist() == [[True, False, False], [True, True, True]]
    tokens = torch.randint(4, 40, (2, 7))
    logits = model(feats, mask, tokens)
    assert logits.shape == (2, 7, 40)
    alone = model(*pad_segments([one]), tokens[:1])  # the padded frames of segment 0 change nothing
    assert torch.allclose(logits[0], alone[0], atol=1e-5)


def test_attend_looks_at_every_frame():
    """Changing one frame of a segment changes the caption distribution: it is not its first frame."""
    model = small("attend")
    frames = np.random.default_rng(0).normal(size=(3, 49, 1280)).astype(np.float32)
    other = frames.copy()
    other[2] += 3.0
    tokens = torch.randint(4, 40, (1, 5))
    a = model(*pad_segments([frames]), tokens)
    b = model(*pad_segments([other]), tokens)
    assert not torch.allclose(a, b, atol=1e-4)


def test_repeated_ngrams_are_banned():
    assert _banned([5, 6, 7, 5, 6], 3) == [7]
    assert _banned([5, 6, 7], 3) == []
    assert sorted(_banned([1, 2, 1, 3, 1], 2)) == [2, 3]


class Parrot(torch.nn.Module):
    """A fake decoder that always prefers token 5 then 6: beam search must not loop on it."""

    config = ModelConfig(vocab_size=10, max_len=12)

    def prepare(self, feats, mask, style=None):
        return None, torch.zeros(feats.size(0), 1)

    def step(self, tokens, state, memory):
        logits = torch.full((tokens.size(0), 10), -5.0)
        logits[:, 5] = 2.0
        logits[:, 6] = 1.0
        logits[:, 2] = -1.0  # <eos> is possible but unlikely
        return logits, state

    select = staticmethod(lambda tree, index: None if tree is None else tree.index_select(0, index))


@pytest.mark.parametrize("beam", [1, 3])
def test_beam_search_blocks_repeats_and_scores(beam):
    feats, mask = pad_segments([np.zeros((1, 49, 8), np.float32)] * 2)
    hyps = beam_search(Parrot(), feats, mask, bos_id=1, eos_id=2, banned_ids=(0, 1, 3), beam=beam,
                       max_len=12, no_repeat_ngram=2)
    for h in hyps:
        pairs = list(zip(h.ids, h.ids[1:]))
        assert len(pairs) == len(set(pairs)), h.ids  # no bigram twice
        assert 0.0 < h.score <= 1.0


def test_greedy_equals_beam_of_one_argmax():
    model = small("attend")
    feats, mask = pad_segments([np.random.default_rng(3).normal(size=(1, 49, 1280)).astype(np.float32)])
    hyp = beam_search(model, feats, mask, bos_id=1, eos_id=2, beam=1, max_len=6, no_repeat_ngram=0)[0]
    memory, state = model.prepare(feats, mask)
    tok, ids = torch.tensor([1]), []
    for step in range(6):
        logits, state = model.step(tok, state, memory)
        if step == 0:
            logits[:, 2] = -1e9
        tok = logits.argmax(-1)
        if tok.item() == 2:
            break
        ids.append(tok.item())
    assert hyp.ids == ids


def test_model_folder_roundtrip_and_no_code_execution(tmp_path):
    model = small("attend")
    vocab = Vocab(["<pad>", "<bos>", "<eos>", "<unk>"] + [f"t{i}/NNG" for i in range(36)])
    modelfile.save(tmp_path / "m", model, vocab, {"note": "test"}, card="# card")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors", "vocab.json"]
    loaded = modelfile.load(tmp_path / "m")
    feats, mask = pad_segments([np.ones((1, 49, 1280), np.float32)])
    tokens = torch.randint(4, 40, (1, 5))
    assert torch.allclose(model(feats, mask, tokens), loaded.model(feats, mask, tokens))
    assert loaded.meta["note"] == "test"
    # half-precision packaging keeps the outputs close
    modelfile.save(tmp_path / "h", model, vocab, half=True)
    half = modelfile.load(tmp_path / "h").model
    assert torch.allclose(model(feats, mask, tokens), half(feats, mask, tokens), atol=1e-2)


class _Payload:
    """Unpickling this creates a file: what a hostile pickled model would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickled_payload_in_a_model_folder_never_runs(tmp_path):
    import pickle

    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Payload(proof))).close()
    assert proof.exists()  # the payload is real: unpickled, it writes a file

    model = small("attend")
    vocab = Vocab(["<pad>", "<bos>", "<eos>", "<unk>"] + [f"t{i}/NNG" for i in range(36)])
    folder = modelfile.save(tmp_path / "m", model, vocab)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    (folder / "pytorch_model.bin").write_bytes(payload)  # beside the weights: never read
    loaded = modelfile.load(folder)
    assert isinstance(loaded.model, torch.nn.Module) and not marker.exists()
    (folder / "model.safetensors").write_bytes(payload)  # in place of the weights: refused, not run
    with pytest.raises(KvcapError, match="damaged"):
        modelfile.load(folder)
    torch.save({"x": _Payload(marker)}, folder / "model.safetensors")  # a torch checkpoint, the same
    with pytest.raises(KvcapError, match="damaged"):
        modelfile.load(folder)
    assert not marker.exists()


def test_damaged_model_folders_are_refused(tmp_path):
    model = small("show-tell")
    vocab = Vocab(["<pad>", "<bos>", "<eos>", "<unk>"] + [f"t{i}/NNG" for i in range(36)])
    folder = modelfile.save(tmp_path / "m", model, vocab)
    (folder / "model.safetensors").write_bytes(b"\x80\x04pickle? no")
    with pytest.raises(KvcapError, match="damaged"):
        modelfile.load(folder)
    folder = modelfile.save(tmp_path / "n", model, vocab)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model"]["arch"] = "evil"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((KvcapError, ValueError)):
        modelfile.load(folder)
    with pytest.raises(KvcapError, match="not found"):
        modelfile.load(tmp_path / "nothing")


def test_shipped_model_loads_from_the_package():
    loaded = modelfile.load()
    assert loaded.model.config.arch in ("attend", "show-tell")
    size = sum(f.stat().st_size for f in modelfile.default_dir().iterdir())
    assert size < 30e6
    assert (modelfile.default_dir() / "README.md").exists()


def test_a_token_banned_for_one_segment_is_never_written_there_only():
    from kvcap.decoding import beam_search_nbest

    model = small("attend")
    rng = np.random.default_rng(5)
    feats, mask = pad_segments([rng.normal(size=(1, 49, 1280)).astype(np.float32) for _ in range(2)])
    kw = dict(bos_id=1, eos_id=2, beam=3, max_len=8, no_repeat_ngram=0)
    free = beam_search_nbest(model, feats, mask, **kw)
    token = free[0][0].ids[0]
    banned = beam_search_nbest(model, feats, mask, item_banned=[[token], []], **kw)
    assert all(token not in h.ids for h in banned[0])
    assert [h.ids for h in banned[1]] == [h.ids for h in free[1]]  # the other segment is untouched


class Tiring(Parrot):
    """A model that tires at its segment's own pace: <eos> grows likelier every word, faster
    for segments with brighter features, so the segments of one batch finish unevenly."""

    def prepare(self, feats, mask, style=None):
        pace = feats.mean(dim=(1, 2, 3)).unsqueeze(-1)  # (B, 1), the memory
        return pace, torch.zeros(feats.size(0), 1)  # state: words written

    def step(self, tokens, state, memory):
        logits = torch.stack([torch.full_like(state[:, 0], -9.0)] * 10, dim=-1)
        logits[:, 3:9] = torch.linspace(1.0, 0.0, 6)  # some words likelier than others
        pace = memory[:, 0].repeat_interleave(tokens.size(0) // memory.size(0))  # one per segment
        logits[:, 2] = -4.0 + state[:, 0] * pace
        return logits, state + 1


def test_a_segment_gets_the_same_hypotheses_alone_as_in_a_batch_that_finishes_unevenly():
    # finished segments leave the batch while the others go on searching (decoding.py):
    # what each segment gets must not depend on which others share its batch
    from kvcap.decoding import beam_search_nbest

    paces = [2.0, 0.4, 1.0, 0.25, 0.6]
    segs = [np.full((1, 49, 8), pace, np.float32) for pace in paces]
    bans = [[], [4], [], [], [3, 5]]
    kw = dict(bos_id=1, eos_id=2, banned_ids=(0, 1), beam=3, max_len=30, no_repeat_ngram=2)
    together = beam_search_nbest(Tiring(), *pad_segments(segs), item_banned=bans, **kw)
    lengths = set()
    for i, seg in enumerate(segs):
        alone = beam_search_nbest(Tiring(), *pad_segments([seg]), item_banned=[bans[i]], **kw)
        assert [h.ids for h in alone[0]] == [h.ids for h in together[i]]
        assert [h.logprob for h in alone[0]] == pytest.approx([h.logprob for h in together[i]], abs=1e-5)
        assert not set(bans[i]) & {t for h in together[i] for t in h.ids}
        lengths.add(len(together[i][0].ids))
    assert len(lengths) >= 4  # they did finish at different steps
