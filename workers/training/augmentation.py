"""Training-time augmentation, chosen by a short spec such as ``flip,rotate:0.05,zoom:0.1``.

Digits must not be flipped (a flipped digit is another digit) while photos want horizontal
flips, so the user chooses. Factors are fractions: of a full turn for ``rotate``, of the image
size for ``zoom`` and ``translate``, of the contrast range for ``contrast``.
"""

from __future__ import annotations

from typing import Any

# Today's digits default: small, label-preserving changes, no flips.
DEFAULT_AUGMENTATION = "translate:0.08,rotate:0.04,zoom:0.08"
_WITH_FACTOR = ("rotate", "zoom", "translate", "contrast")
_HELP = "use comma-separated flip, rotate:F, zoom:F, translate:F, contrast:F (0 < F <= 1), or none"


def parse_augmentation(spec: str) -> list[tuple[str, float]]:
    """``[(name, factor), ...]`` for a spec; ``none`` or an empty spec means no augmentation.

    Raises:
        ValueError: an unknown name, a missing or out-of-range factor, or a repeated name.
    """
    steps: list[tuple[str, float]] = []
    if spec.strip().lower() in ("", "none"):
        return steps
    for item in spec.split(","):
        name, _, value = item.strip().lower().partition(":")
        if name == "flip" and not value:
            steps.append((name, 1.0))
            continue
        if name not in _WITH_FACTOR:
            raise ValueError(f"unknown augmentation {item.strip()!r}: {_HELP}")
        try:
            factor = float(value)
        except ValueError:
            raise ValueError(f"{name} needs a factor, e.g. {name}:0.1: {_HELP}") from None
        if not 0 < factor <= 1:
            raise ValueError(f"{name} factor must be in (0, 1], got {value}")
        steps.append((name, factor))
    names = [name for name, _ in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"each augmentation may appear once, got {spec!r}")
    return steps


def make_augmentation(spec: str, *, seed: int) -> Any | None:
    """A ``keras.Sequential`` of random layers for ``spec``, or None when there is none."""
    steps = parse_augmentation(spec)
    if not steps:
        return None
    import keras
    from keras import layers

    build = {
        "flip": lambda f: layers.RandomFlip("horizontal", seed=seed),
        "rotate": lambda f: layers.RandomRotation(f, fill_mode="nearest", seed=seed),
        "zoom": lambda f: layers.RandomZoom(f, fill_mode="nearest", seed=seed),
        "translate": lambda f: layers.RandomTranslation(f, f, fill_mode="nearest", seed=seed),
        "contrast": lambda f: layers.RandomContrast(f, seed=seed),
    }
    return keras.Sequential([build[name](factor) for name, factor in steps], name="augment")
