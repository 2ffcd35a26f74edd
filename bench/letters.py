"""A slow-learning image set unlike digits: the 26 capital letters rendered with PIL in the DejaVu fonts, 32x32 RGB.

Each image draws one letter in a random DejaVu face (regular, bold, oblique, condensed), size, position and
rotation, in a random colour on a random background of another colour, with pixel noise, and sometimes a distractor
stroke. A small CNN stays near chance for its first epochs on it, then climbs: the case that the fold-end chance
check must not cut short. ``--level hard`` (the default) rotates by up to 25 degrees, adds strong noise and a
distractor stroke; ``--level medium`` less of each; ``--easy`` draws larger, upright, black-on-white letters.

    python -m bench.letters OUT.npz [--per-class 120] [--seed 0] [--level hard|medium] [--easy]
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONTS = Path("/usr/share/fonts/truetype/dejavu")
FACES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSansCondensed.ttf",
         "DejaVuSansCondensed-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf")
SIZE = 32


def faces() -> list[Path]:
    found = [FONTS / f for f in FACES if (FONTS / f).exists()]
    if not found:
        raise SystemExit(f"no DejaVu fonts in {FONTS} (Debian: apt-get install fonts-dejavu-core)")
    return found


LEVELS = {  # rotation in degrees, pixel noise, letter size as a share of the image, distractor stroke, contrast
    "hard": (25, 18, (0.4, 0.8), 0.5, (70, 186)),
    "medium": (10, 8, (0.55, 0.8), 0.0, (110, 146)),
}


def render(letter: str, rng: np.random.Generator, fonts: list[Path], *, easy: bool,
           level: str = "hard") -> np.ndarray:
    """One 32x32 RGB image of ``letter``."""
    big = SIZE * 2  # drawn at twice the size, then shrunk with antialiasing
    rotation, noise, (small_size, large_size), stroke, (low, high) = LEVELS[level]
    if easy:
        fg, bg = (0, 0, 0), (255, 255, 255)
    else:
        bg = tuple(int(v) for v in rng.integers(0, 256, 3))
        fg = tuple(int((b + rng.integers(low, high)) % 256) for b in bg)  # another colour, never the background's
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]),
                              int(big * (rng.uniform(0.7, 0.85) if easy else rng.uniform(small_size, large_size))))
    left, top, right, bottom = draw.textbbox((0, 0), letter, font=font)
    slack_x, slack_y = max(0, big - (right - left)), max(0, big - (bottom - top))
    x = (slack_x // 2 if easy else rng.integers(0, slack_x + 1)) - left
    y = (slack_y // 2 if easy else rng.integers(0, slack_y + 1)) - top
    draw.text((x, y), letter, fill=fg, font=font)
    if not easy and rng.random() < stroke:  # a distractor stroke
        a, b = rng.integers(0, big, 2), rng.integers(0, big, 2)
        draw.line([tuple(a), tuple(b)], fill=fg, width=int(rng.integers(2, 5)))
    if not easy:
        img = img.rotate(float(rng.uniform(-rotation, rotation)), resample=Image.Resampling.BILINEAR, fillcolor=bg)
    small = np.asarray(img.resize((SIZE, SIZE), Image.Resampling.LANCZOS), dtype=np.float32)
    if not easy:
        small += rng.normal(0, noise, small.shape)
    return np.clip(small, 0, 255).astype(np.uint8)


def letters(per_class: int = 120, seed: int = 0, *, easy: bool = False,
            level: str = "hard") -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: x of shape (26 * per_class, 32, 32, 3) uint8, y the letter index 0-25."""
    rng = np.random.default_rng(seed)
    fonts = faces()
    x = np.stack([render(c, rng, fonts, easy=easy, level=level) for c in string.ascii_uppercase
                  for _ in range(per_class)])
    y = np.repeat(np.arange(26), per_class)
    order = rng.permutation(len(y))
    return x[order], y[order]


def write_npz(path: Path, per_class: int = 120, seed: int = 0, *, easy: bool = False, level: str = "hard") -> Path:
    x, y = letters(per_class, seed, easy=easy, level=level)
    np.savez_compressed(path, x=x, y=y)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--easy", action="store_true")
    parser.add_argument("--level", choices=sorted(LEVELS), default="hard")
    ns = parser.parse_args()
    write_npz(ns.out, ns.per_class, ns.seed, easy=ns.easy, level=ns.level)
    print(f"wrote {ns.out}: {26 * ns.per_class} images of 32x32x3")


if __name__ == "__main__":
    main()
