"""The Shapes benchmark: scene sampler, renderer and caption grammar.

Implements ``docs/shapes.md`` to the letter. Every geometry number is a
fraction of the image side, so one scene renders at any resolution. A scene is
a pure function of (split, index, seed): the same triple gives the same bytes
on every machine.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

BACKGROUND = (242, 242, 242)
COLORS = {
    "red": (215, 38, 38),
    "green": (34, 160, 70),
    "blue": (35, 85, 215),
    "yellow": (240, 195, 25),
    "purple": (140, 55, 185),
    "cyan": (20, 185, 200),
}
SHAPES = ("circle", "square", "triangle")
SIZE_RANGES = {"small": (0.16, 0.20), "large": (0.28, 0.34)}
GAP = 0.04  # minimum gap between bounding boxes
MARGIN = 0.03  # minimum distance of a box from the canvas edge
RELATION_MARGIN = 0.15  # the dominant-axis offset a sampled relation keeps
# Sampled scenes also keep the dominant offset this much above the other one, so a
# scorer reading centres off pixels (1/64 of the side at R = 64) agrees with the scene.
DOMINANCE_MARGIN = 0.04

# Held out of `train` entirely (docs/shapes.md, Splits): compositional generalization.
HELD_OUT_PAIRS = (("green", "triangle"), ("blue", "circle"), ("yellow", "square"))
ALL_PAIRS = tuple((c, s) for c in COLORS for s in SHAPES)
SEEN_PAIRS = tuple(p for p in ALL_PAIRS if p not in HELD_OUT_PAIRS)

SPLITS = ("train", "test", "test-novel")
_SPLIT_CODE = {"train": 0, "test": 1, "test-novel": 2}
CATEGORY_MIX = (("single", 0.2), ("pair", 0.3), ("count", 0.2), ("position", 0.3))
RELATIONS = ("left", "right", "above", "below")
INVERSE_RELATION = {"left": "right", "right": "left", "above": "below", "below": "above"}
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}

# Wordings. The first is canonical; the others appear in training captions and
# are all accepted by the scorer's parser.
RELATION_WORDS = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above", "on top of"),
    "below": ("below", "under", "beneath"),
}


@dataclass
class ShapeObject:
    color: str
    shape: str
    size: str  # "small" or "large"
    s: float  # side of the bounding box, fraction of the image side
    x: float  # left edge of the box
    y: float  # top edge of the box
    say_size: bool = False  # whether the prompt names the size

    @property
    def cx(self) -> float:
        return self.x + self.s / 2

    @property
    def cy(self) -> float:
        return self.y + self.s / 2

    def phrase(self, article: str = "a", with_size: bool | None = None) -> str:
        with_size = self.say_size if with_size is None else with_size
        size = f"{self.size} " if with_size else ""
        return f"{article} {size}{self.color} {self.shape}"


@dataclass
class Scene:
    category: str
    objects: list[ShapeObject]
    relation: str | None = None  # position: objects[0] <relation> objects[1]
    split: str = "train"
    index: int = 0
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The canonical wording (docs/shapes.md, Prompt categories)."""
        o = self.objects
        if self.category == "single":
            return o[0].phrase()
        if self.category == "pair":
            return f"{o[0].phrase()} and {o[1].phrase()}"
        if self.category == "count":
            return f"{COUNT_WORDS[len(o)]} {o[0].color} {o[0].shape}s"
        return f"{o[0].phrase()} {RELATION_WORDS[self.relation][0]} {o[1].phrase()}"

    @property
    def novel(self) -> bool:
        return any((ob.color, ob.shape) in HELD_OUT_PAIRS for ob in self.objects)

    def caption(self, rng: np.random.Generator) -> str:
        """A random paraphrase of the prompt, as training captions vary."""
        o = self.objects
        art = lambda: str(rng.choice(["a", "one"], p=[0.8, 0.2]))  # noqa: E731
        if self.category == "single":
            return o[0].phrase(art())
        if self.category == "pair":
            a, b = (o[0], o[1]) if rng.random() < 0.5 else (o[1], o[0])
            return f"{a.phrase(art())} and {b.phrase(art())}"
        if self.category == "count":
            n = len(o)
            number = COUNT_WORDS[n] if rng.random() < 0.7 else str(n)
            return f"{number} {o[0].color} {o[0].shape}s"
        a, b, rel = o[0], o[1], self.relation
        if rng.random() < 0.5:  # "A left of B" says the same as "B right of A"
            a, b, rel = b, a, INVERSE_RELATION[rel]
        words = RELATION_WORDS[rel]
        return f"{a.phrase(art())} {words[rng.integers(len(words))]} {b.phrase(art())}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["prompt"] = self.prompt
        return d


def _rng(split: str, index: int, seed: int) -> np.random.Generator:
    if split not in _SPLIT_CODE:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return np.random.default_rng([_SPLIT_CODE[split], int(seed), int(index)])


def _boxes_ok(box: tuple[float, float, float], placed: list[ShapeObject]) -> bool:
    x, y, s = box
    for o in placed:
        apart_x = x >= o.x + o.s + GAP or o.x >= x + s + GAP
        apart_y = y >= o.y + o.s + GAP or o.y >= y + s + GAP
        if not (apart_x or apart_y):
            return False
    return True


def relation_holds(
    a: ShapeObject | tuple, b: ShapeObject | tuple, relation: str, margin: float = 0.0, dominance: float = 0.0
) -> bool:
    """Whether `a <relation> b` holds between box centres (dominant-axis rule).

    `margin` is the least offset along the relation's axis (0.15 when sampling,
    none when scoring); `dominance` how much that offset must exceed the other.
    """
    ax, ay = (a.cx, a.cy) if isinstance(a, ShapeObject) else a
    bx, by = (b.cx, b.cy) if isinstance(b, ShapeObject) else b
    dx, dy = bx - ax, by - ay  # offset from a to b; image y grows downward
    if relation == "left":
        return dx >= margin and dx > 0 and abs(dx) > abs(dy) + dominance
    if relation == "right":
        return -dx >= margin and dx < 0 and abs(dx) > abs(dy) + dominance
    if relation == "above":
        return dy >= margin and dy > 0 and abs(dy) > abs(dx) + dominance
    if relation == "below":
        return -dy >= margin and dy < 0 and abs(dy) > abs(dx) + dominance
    raise ValueError(f"unknown relation {relation!r}")


def _place(rng: np.random.Generator, specs: list[tuple[str, str, str]], relation: str | None) -> list[ShapeObject] | None:
    objects: list[ShapeObject] = []
    for color, shape, size in specs:
        lo, hi = SIZE_RANGES[size]
        s = float(rng.uniform(lo, hi))
        for _ in range(100):
            x = float(rng.uniform(MARGIN, 1 - MARGIN - s))
            y = float(rng.uniform(MARGIN, 1 - MARGIN - s))
            if _boxes_ok((x, y, s), objects):
                objects.append(ShapeObject(color, shape, size, s, x, y))
                break
        else:
            return None
    if relation is not None and not relation_holds(objects[0], objects[1], relation, RELATION_MARGIN, DOMINANCE_MARGIN):
        return None
    return objects


def _pick_pair(rng: np.random.Generator, pairs: tuple) -> tuple[str, str]:
    return pairs[rng.integers(len(pairs))]


def _two_pairs(rng: np.random.Generator, split: str) -> list[tuple[str, str]]:
    """Two (color, shape) pairs that differ in color or shape."""
    while True:
        if split == "test-novel":  # at least one held-out pair, in either slot
            first, second = _pick_pair(rng, HELD_OUT_PAIRS), _pick_pair(rng, ALL_PAIRS)
            pairs = [first, second] if rng.random() < 0.5 else [second, first]
        else:
            pairs = [_pick_pair(rng, SEEN_PAIRS), _pick_pair(rng, SEEN_PAIRS)]
        if pairs[0] != pairs[1]:
            return pairs


def _size(rng: np.random.Generator) -> str:
    return "small" if rng.random() < 0.5 else "large"


def sample_scene(split: str, index: int, seed: int = 0, category: str | None = None) -> Scene:
    """The scene at (split, index, seed); `category` forces one category."""
    rng = _rng(split, index, seed)
    if category is None:
        names, probs = zip(*CATEGORY_MIX)
        category = names[rng.choice(len(names), p=probs)]
    one_pool = HELD_OUT_PAIRS if split == "test-novel" else SEEN_PAIRS
    while True:
        relation = None
        say = [False, False]
        if category == "single":
            specs = [(*_pick_pair(rng, one_pool), _size(rng))]
            say = [rng.random() < 0.5]
        elif category == "pair":
            specs = [(c, s, _size(rng)) for c, s in _two_pairs(rng, split)]
            say = [bool(rng.random() < 0.3), bool(rng.random() < 0.3)]
        elif category == "count":
            n = int(rng.integers(2, 5))
            pair, size = _pick_pair(rng, one_pool), _size(rng)
            specs = [(*pair, size)] * n
            say = [False] * n
        elif category == "position":
            specs = [(c, s, _size(rng)) for c, s in _two_pairs(rng, split)]
            relation = RELATIONS[rng.integers(4)]
        else:
            raise ValueError(f"unknown category {category!r}; choose one of single, pair, count, position")
        # Retry positions with the same objects before drawing new ones: redrawing at
        # once would under-represent scenes that rarely fit (four large objects).
        for _ in range(50):
            objects = _place(rng, specs, relation)
            if objects is not None:
                break
        if objects is not None:
            for o, flag in zip(objects, say):
                o.say_size = bool(flag)
            return Scene(category, objects, relation, split, index, seed)


def render(scene: Scene, resolution: int = 64, supersample: int = 4) -> Image.Image:
    """Anti-aliased render: draw at `supersample` x the side, then box-downsample."""
    big = resolution * supersample
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for o in scene.objects:
        x0, y0, s = o.x * big, o.y * big, o.s * big
        x1, y1 = x0 + s, y0 + s
        fill = COLORS[o.color]
        if o.shape == "circle":
            draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)
        elif o.shape == "square":
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=fill)
        else:  # triangle: base on the bottom edge of the box, apex at its top centre
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=fill)
    return image.reduce(supersample) if supersample > 1 else image


# ---- prompt grammar -------------------------------------------------------

class PromptError(ValueError):
    """A prompt outside the Shapes grammar."""


@dataclass(frozen=True)
class ObjectSpec:
    color: str
    shape: str
    size: str | None = None


@dataclass(frozen=True)
class ParsedPrompt:
    category: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    @property
    def novel(self) -> bool:
        return any((o.color, o.shape) in HELD_OUT_PAIRS for o in self.objects)


_C = "|".join(COLORS)
_S = "|".join(SHAPES)
_OBJ = rf"(?:a|an|one) (?:(small|large) )?({_C}) ({_S})"
_REL = {w: r for r, ws in RELATION_WORDS.items() for w in ws}
_REL_RE = "|".join(sorted(map(re.escape, _REL), key=len, reverse=True))
_NUM = {"two": 2, "three": 3, "four": 4, "2": 2, "3": 3, "4": 4}
_PATTERNS = {
    "single": re.compile(rf"^{_OBJ}$"),
    "pair": re.compile(rf"^{_OBJ} and {_OBJ}$"),
    "count": re.compile(rf"^({'|'.join(_NUM)}) ({_C}) ({_S})s$"),
    "position": re.compile(rf"^{_OBJ} ({_REL_RE}) {_OBJ}$"),
}


def normalize_prompt(prompt: str) -> str:
    return re.sub(r"\s+", " ", prompt.strip().lower()).rstrip(".").strip()


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Parse a prompt of the Shapes grammar; raise PromptError otherwise."""
    text = normalize_prompt(prompt)
    for category, pattern in _PATTERNS.items():
        m = pattern.match(text)
        if not m:
            continue
        g = m.groups()
        if category == "single":
            return ParsedPrompt("single", (ObjectSpec(g[1], g[2], g[0]),))
        if category == "count":
            return ParsedPrompt("count", (ObjectSpec(g[1], g[2]),) * _NUM[g[0]])
        if category == "pair":
            a, b, relation = ObjectSpec(g[1], g[2], g[0]), ObjectSpec(g[4], g[5], g[3]), None
        else:
            a, b, relation = ObjectSpec(g[1], g[2], g[0]), ObjectSpec(g[5], g[6], g[4]), _REL[g[3]]
        if (a.color, a.shape) == (b.color, b.shape):
            raise PromptError(f"prompt {prompt!r} names the same object twice; the two objects of a "
                              f"{category} prompt differ in color or shape (for two alike, say 'two {a.color} {a.shape}s')")
        return ParsedPrompt(category, (a, b), relation)
    raise _outside(prompt)


def _outside(prompt: str) -> PromptError:
    return PromptError(
        f"prompt {prompt!r} is outside the Shapes grammar; examples: 'a red circle', "
        "'a small blue square and a large green circle', 'three yellow triangles', "
        "'a red circle to the left of a blue square' "
        f"(colors: {', '.join(COLORS)}; shapes: {', '.join(SHAPES)})"
    )
