"""Self-critical fine-tuning (scst.py): the reward's noun term on hand-made captions, that its
update makes a decoder write what the reward prefers, and `kvcap finetune` on the default model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import both_datasets

from kvcap import modelfile
from kvcap.korean import SPECIALS, Vocab
from kvcap.models import ModelConfig, build
from kvcap.scst import FinetuneConfig, Reward, sample, update

TOKENS = ["▁남자/NNG", "가/JKS", "▁개/NNG", "와/JC", "▁위/NNG", "에/JKB", "▁서/VV", "▁있/VX", "다/EF", "./SF",
          "▁남성/NNG", "▁고양이/NNG"]
VOCAB = Vocab(list(SPECIALS) + TOKENS)
REFS = [[["▁남자/NNG", "가/JKS", "▁서/VV", "▁있/VX", "다/EF", "./SF"],
         ["▁남자/NNG", "가/JKS", "▁위/NNG", "에/JKB", "▁서/VV", "▁있/VX", "다/EF"]],
        [["▁고양이/NNG", "와/JC", "▁개/NNG", "가/JKS", "▁있/VX", "다/EF"]]]  # a second picture: CIDEr's idf needs two


def kvcap(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvcap", *args], capture_output=True, text=True, env=dict(os.environ))


def ids(*tokens: str) -> list[int]:
    return VOCAB.encode(list(tokens))


def test_reward_adds_a_point_per_true_noun_and_takes_one_per_false_noun():
    reward = Reward(VOCAB, REFS, noun_weight=1.0)
    cider = lambda *t: reward.cider.score(0, [VOCAB.tokens[i].lstrip("▁").rsplit("/", 1)[0]  # noqa: E731
                                              for i in ids(*t) if not VOCAB.tokens[i].endswith("/SF")])
    true = ("▁남자/NNG", "가/JKS", "▁서/VV", "▁있/VX", "다/EF")
    assert reward(0, ids(*true)) == pytest.approx(cider(*true) + 1.0)  # 남자: a reference names it
    both = ("▁남자/NNG", "와/JC", "▁개/NNG", "가/JKS", "▁서/VV", "▁있/VX", "다/EF")
    assert reward(0, ids(*both)) == pytest.approx(cider(*both) + 0.0)  # 개: none does (+1 - 1)
    false = ("▁고양이/NNG", "가/JKS", "▁서/VV", "▁있/VX", "다/EF")
    assert reward(0, ids(*false)) == pytest.approx(cider(*false) - 1.0)
    # a variant of a named noun counts as it; a relational noun ('위') counts for nothing
    assert reward(0, ids("▁남성/NNG", "가/JKS", "▁서/VV", "▁있/VX", "다/EF")) > reward(0, ids(*false)) + 1.5
    placed = ("▁위/NNG", "에/JKB", "▁서/VV", "▁있/VX", "다/EF")
    assert reward(0, ids(*placed)) == pytest.approx(cider(*placed))
    # punctuation is not scored, and a reference itself scores far above a false caption
    assert reward(0, ids(*true, "./SF")) == pytest.approx(reward(0, ids(*true)))
    assert cider(*true) > cider(*false) + 1.0


def test_updates_make_the_decoder_sample_what_the_reward_prefers():
    torch.manual_seed(0)
    model = build(ModelConfig(vocab_size=len(VOCAB), feature_dim=16, embed_dim=16, hidden_dim=32, attn_dim=16,
                              dropout=0.0, max_len=8))
    feats, mask = torch.randn(1, 1, 4, 16), torch.ones(1, 1, dtype=torch.bool)
    reward = Reward(VOCAB, REFS, noun_weight=1.0)
    cfg = FinetuneConfig(data=[], model="", samples=8, lr=3e-3)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def mean_reward() -> float:
        with torch.no_grad():
            got, _, keep = sample(model, feats.expand(16, -1, -1, -1), mask.expand(16, -1), VOCAB, 4, 8)
        rows = [[t for t, m in zip(r, k) if m and t != VOCAB.eos_id] for r, k in zip(got.tolist(), keep.tolist())]
        return sum(reward(0, r) for r in rows) / len(rows)

    before = mean_reward()
    for _ in range(100):
        update(model, opt, feats, mask, [0], reward, cfg)
    after = mean_reward()
    # a random decoder names random nouns among random words; trained on its own samples it
    # moves towards '남자가 … 서 있다' (a reference scores ~ CIDEr-D 4-5, +1 for its noun)
    assert before < 1.0
    assert after > before + 1.5


@pytest.fixture(scope="module")
def default_model_subset(koflickr, koscenes, tmp_path_factory) -> Path:
    """A manifest of a few validation and training pictures of the default model's own split."""
    split = json.loads((modelfile.default_dir() / "split.json").read_text())["datasets"]

    def pick(name: str, records: list[dict]) -> list[dict]:
        held = set(split[name]["validation"]) | set(split[name]["test"])
        val = set(sorted(split[name]["validation"])[:24])
        return [r for r in records if str(r["id"]) in val] + [r for r in records if str(r["id"]) not in held][:64]

    return both_datasets(tmp_path_factory.mktemp("finetune"), koflickr, koscenes, pick)


def test_finetune_cli_keeps_a_better_calibrated_copy_and_leaves_the_model_alone(default_model_subset, tmp_path):
    source = modelfile.default_dir()
    before = {f.name: f.read_bytes() for f in source.iterdir() if f.is_file()}
    out = tmp_path / "ft"
    args = ["finetune", str(default_model_subset), "--model", str(source), "--out", str(out), "--quiet"]
    r = kvcap(*args, "--epochs", "1", "--lr", "1e-4")
    assert r.returncode == 0, r.stderr[-2000:]
    log = json.loads((out / "finetune_log.json").read_text())
    assert [row["epoch"] for row in log] == [0, 1]
    assert log[1]["objective"] > log[0]["objective"]  # kept only because validation got better
    assert {"val_cider_koflickr", "val_noun_precision_koscenes"} <= set(log[1])
    loaded = modelfile.load(out)
    assert loaded.witness is not None and (out / "split.json").read_bytes() == before["split.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["finetune"]["from"] == "koflickr-koscenes-attend" and config["validation"]["epoch"] == 1
    assert config["confidence"]["fitted_on"] == "validation, 48 examples" and "test" not in config
    assert {f.name: f.read_bytes() for f in source.iterdir() if f.is_file()} == before
    again = kvcap(*args)
    assert again.returncode == 2 and "a model is already there" in again.stderr


@pytest.mark.parametrize("extra, message", [
    (["--samples", "1"], "--samples"),
    (["--lr", "0"], "--lr"),
    (["--noun-weight", "-1"], "--noun-weight"),
])
def test_finetune_refuses_bad_options_in_one_line(default_model_subset, tmp_path, extra, message):
    r = kvcap("finetune", str(default_model_subset), "--model", str(modelfile.default_dir()),
              "--out", str(tmp_path / "ft"), "--quiet", *extra)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ft").exists()


def test_finetune_refuses_to_write_over_the_model_it_starts_from(default_model_subset, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(modelfile.default_dir(), model)
    r = kvcap("finetune", str(default_model_subset), "--model", str(model), "--out", str(model), "--quiet")
    assert r.returncode == 2 and "must be a new folder" in r.stderr
