"""What the encoder's own ImageNet classifier sees: a check on the animals a caption names.

The decoder is fluent but mixes up animals (a cockatoo became '검은 개', a parking lot '개').
The classifier head that ships with the encoder (ImageNet-1k, trained on 1.2M photos) is an
independent witness for the few kinds it knows well. A caption that names an animal whose
ImageNet classes together hold less than MIN_MASS of the segment's probability names
something the classifier does not see there; `captions.generate` then keeps the best beam
hypothesis without such a problem. People, objects and scenes are not checked: ImageNet has
no 'person' class and its object classes are too narrow to veto a word.
"""
from __future__ import annotations

import numpy as np

from . import korean

MIN_MASS = 0.05  # below this, the named animal is not what the picture shows (see the model card)

# Korean nouns (after korean.nouns_many's folding) -> ImageNet-1k class indices
ANIMALS: dict[str, list[int]] = {
    "개": list(range(151, 269)),  # the dog breeds
    "고양이": list(range(281, 286)),  # domestic cats
    "새": list(range(7, 25)) + list(range(80, 101)) + list(range(127, 147)),
    "말": [339, 603],  # sorrel, horse cart
    "소": [345, 346, 347],
    "원숭이": list(range(369, 385)),
    "곰": list(range(294, 298)),
    "코끼리": [101, 385, 386],
}


def unseen_animals(text: str, probs: np.ndarray, nouns: set[str] | None = None) -> list[str]:
    """The animals `text` names (its `nouns`, if already found) that the class probabilities
    `probs` (1000,) do not show."""
    named = korean.nouns_many([text])[0] if nouns is None else nouns
    return [a for a in ANIMALS if a in named and float(probs[ANIMALS[a]].sum()) < MIN_MASS]


def problems(text: str, probs: np.ndarray | None, nouns: set[str] | None = None) -> list[str]:
    """Sentence problems in the form `korean.sentence_problems` gives them."""
    if probs is None:
        return []
    return [f"names {a} the picture does not show" for a in unseen_animals(text, probs, nouns)]


def backed(witness, witness_probs: np.ndarray, class_probs) -> np.ndarray:
    """Noun-witness probabilities (B, nouns) with each animal's raised to what the ImageNet
    classifier gives its classes, where that is more: two witnesses, and the classifier,
    trained on far more photos of animals, knows a cockatoo close up that the noun witness
    does not ('새' 0.00 → 0.59 confidence on cockatoo.mp4). `class_probs`: (1000,) per row,
    or None for a model without the classifier head."""
    out = np.array(witness_probs, copy=True)
    for row, probs in enumerate(class_probs):
        if probs is None:
            continue
        for animal, classes in ANIMALS.items():
            if animal in witness.index:
                k = witness.index[animal]
                out[row, k] = max(out[row, k], float(probs[classes].sum()))
    return out
