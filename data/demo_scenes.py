"""Demo scenes: shapes on a 3x3 grid, drawn with PIL and described truthfully.

A :class:`Scene` is 1-6 shapes (circle, square, triangle, star; 8 colours; small or
large) in the cells of a 3x3 grid, so shapes never overlap and every position has a word;
:func:`render_scene` draws it (RGB, 64 px, 4x supersampled); :func:`caption` and
:func:`counting_qa` read counts, colours, kinds, sizes and positions off the scene itself.
Answers are digits, so exact-match scoring needs no number-word normalisation.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SHAPE_KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
    "white": (250, 250, 250),
    "black": (20, 20, 20),
}
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUND = (128, 128, 128)  # mid grey: every colour above stands out against it
GRID = 3
POSITIONS: dict[tuple[int, int], str] = {
    (row, col): " ".join(w for w in (("top", "", "bottom")[row], ("left", "", "right")[col]) if w) or "center"
    for row in range(GRID)
    for col in range(GRID)
}
"""Grid cell (row, col) -> its position word: (0, 0) "top left", (1, 1) "center", ..."""
_POSITION_PHRASES = {
    "top left": "in the top left corner",
    "top right": "in the top right corner",
    "bottom left": "in the bottom left corner",
    "bottom right": "in the bottom right corner",
    "top": "at the top",
    "bottom": "at the bottom",
    "left": "on the left",
    "right": "on the right",
    "center": "in the center",
}
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MAX_SHAPES = 6

# ------------------------------------------------------------------------------ scenes


@dataclass(frozen=True)
class Shape:
    """One shape in grid cell (``row``, ``col``), offset by ``dx``, ``dy`` (fractions of a cell)."""

    kind: str
    colour: str
    size: str
    row: int
    col: int
    dx: float = 0.0
    dy: float = 0.0

    @property
    def position(self) -> str:
        """Where it is, in words: "top left", "top", ..., "center", ..., "bottom right"."""
        return POSITIONS[(self.row, self.col)]


@dataclass
class Scene:
    """The shapes of one picture; at most one shape per grid cell."""

    shapes: list[Shape] = field(default_factory=list)

    def count(self, kind: str | None = None, colour: str | None = None) -> int:
        """How many shapes have this kind and/or colour (None: any)."""
        return sum(1 for s in self.shapes if kind in (None, s.kind) and colour in (None, s.colour))

    def groups(self) -> list[list[Shape]]:
        """The shapes grouped by (kind, colour), in order of first appearance."""
        out: dict[tuple[str, str], list[Shape]] = {}
        for s in self.shapes:
            out.setdefault((s.kind, s.colour), []).append(s)
        return list(out.values())

    def signature(self) -> tuple[tuple[str, str, str, int, int], ...]:
        """What the scene shows, ignoring the small offsets: equal signatures, same picture."""
        return tuple(sorted((s.kind, s.colour, s.size, s.row, s.col) for s in self.shapes))

    def to_meta(self) -> list[dict[str, str]]:
        """JSON-ready description (stored in each image segment's meta for evaluation)."""
        return [
            {"kind": s.kind, "colour": s.colour, "size": s.size, "position": s.position} for s in self.shapes
        ]


def random_scene(rng: random.Random) -> Scene:
    """1-3 groups of same-kind, same-colour shapes (1-3 each, at most 6 shapes) in random cells."""
    pairs = [(k, c) for k in SHAPE_KINDS for c in COLOURS]
    n_groups = rng.choice((1, 1, 2, 2, 2, 3))
    cells = rng.sample(sorted(POSITIONS), GRID * GRID)
    shapes: list[Shape] = []
    for kind, colour in rng.sample(pairs, n_groups):
        count = min(rng.choice((1, 1, 2, 2, 3)), MAX_SHAPES - len(shapes))
        size = rng.choice(SIZES)
        mixed = rng.random() < 0.2  # sizes differ within the group: the caption names none
        for _ in range(count):
            row, col = cells.pop()
            dx, dy = (round(rng.uniform(-0.05, 0.05), 3) for _ in range(2))
            shapes.append(Shape(kind, colour, rng.choice(SIZES) if mixed else size, row, col, dx, dy))
    return Scene(shapes)


def render_scene(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image (drawn at 4x, box-downsampled)."""
    if size < 16:
        raise ValueError(f"render_scene: size must be at least 16 px, got {size}")
    scale = 4
    big = size * scale
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = big / GRID
    for s in scene.shapes:
        cx, cy = (s.col + 0.5 + s.dx) * cell, (s.row + 0.5 + s.dy) * cell
        r = cell * (0.42 if s.size == "large" else 0.26)
        fill = COLOURS[s.colour]
        if s.kind == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif s.kind == "square":
            h = r * 0.85  # about the area of the circle
            draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
        elif s.kind == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + 0.8 * r), (cx + r, cy + 0.8 * r)], fill=fill)
        elif s.kind == "star":
            points = []
            for i in range(10):
                radius = r if i % 2 == 0 else 0.45 * r
                angle = -math.pi / 2 + i * math.pi / 5
                points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
            draw.polygon(points, fill=fill)
        else:
            raise ValueError(f"render_scene: unknown shape kind {s.kind!r}; expected one of {SHAPE_KINDS}")
    return image.resize((size, size), Image.Resampling.BOX)


def png_bytes(image: Image.Image) -> bytes:
    """``image`` as PNG bytes (no metadata chunks, so equal images give equal bytes)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


# ------------------------------------------------------------------------------ text


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _group_phrase(group: list[Shape]) -> str:
    first, n = group[0], len(group)
    sizes = {s.size for s in group}
    words = ([sizes.pop()] if len(sizes) == 1 else []) + [first.colour, first.kind + ("s" if n > 1 else "")]
    if n == 1:
        article = "an" if words[0][0] in "aeiou" else "a"
        return f"{article} {' '.join(words)} {_POSITION_PHRASES[first.position]}"
    place = ""
    if all(s.col == 0 for s in group):
        place = " on the left"
    elif all(s.col == GRID - 1 for s in group):
        place = " on the right"
    elif all(s.row == 0 for s in group):
        place = " at the top"
    elif all(s.row == GRID - 1 for s in group):
        place = " at the bottom"
    return f"{NUMBER_WORDS[n]} {' '.join(words)}{place}"


def describe(scene: Scene) -> str:
    """The caption without capital or full stop: "two red circles and a small blue star at the top"."""
    if not scene.shapes:
        return "nothing but a grey background"
    return _join([_group_phrase(g) for g in scene.groups()])


def caption(scene: Scene) -> str:
    """A true one-sentence caption: "Two red circles and a small blue square on the left."

    Each (kind, colour) group is named once with its count; its size when all its shapes
    share one; its position when it has one shape (or all share a side of the grid).
    """
    text = describe(scene)
    return text[0].upper() + text[1:] + "."


def count_sentence(scene: Scene) -> str:
    """A true counting sentence: "There are three shapes: two circles and one star."."""
    total = len(scene.shapes)
    kinds = [(k, scene.count(kind=k)) for k in SHAPE_KINDS if scene.count(kind=k)]
    if total == 1:
        return f"There is one shape: a {scene.shapes[0].kind}."
    parts = [f"{NUMBER_WORDS[n]} {k}{'s' if n > 1 else ''}" for k, n in kinds]
    return f"There are {NUMBER_WORDS[total]} shapes: {_join(parts)}."


def counting_qa(scene: Scene, rng: random.Random | None = None) -> tuple[str, str]:
    """A counting question and its answer as digits: ("How many circles are there?", "2").

    Without ``rng`` it asks about the first shape's kind. With ``rng`` it asks about a kind
    in the scene (60%), a kind not in it (15%, answer "0") or a colour (25%).
    """
    if not scene.shapes:
        raise ValueError("counting_qa: the scene has no shapes")
    if rng is None:
        kind = scene.shapes[0].kind
        return f"How many {kind}s are there?", str(scene.count(kind=kind))
    roll = rng.random()
    present = sorted({s.kind for s in scene.shapes})
    absent = [k for k in SHAPE_KINDS if k not in present]
    if roll < 0.25:
        colour = rng.choice(sorted({s.colour for s in scene.shapes}))
        return f"How many {colour} shapes are there?", str(scene.count(colour=colour))
    kind = rng.choice(absent if roll < 0.4 and absent else present)
    return f"How many {kind}s are there?", str(scene.count(kind=kind))
