"""The embedded world: a procedurally generated, seeded, offline captioned image world.

Every image shows one or two objects (the *classes*: shapes such as "star", "moon", "banana") on a background,
each object with a size, a texture and a colour. Captions have the structure the CleanerCLIP sub-captions need:

    "a small striped red star left of a blue square"      (adj) subject – relation – (adj) object
    "a photo of a large dotted green banana"               a simple caption: one object

The world plays the part of CC3M (pre-training and fine-tuning pairs) and of ImageNet (the ``eval`` split: one
object per image, labelled with its class, for zero-shot classification). The class "banana" is the attack
target, as in the papers.

Determinism: sample ``i`` of split ``s`` is drawn from its own generator seeded by ``(seed, s, i)``, so the same
seed gives the same bytes whatever the number of samples asked for, and any slice can be regenerated alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

# ---------------------------------------------------------------------------------------------------------------
# The vocabulary of the world
# ---------------------------------------------------------------------------------------------------------------

CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "heart", "moon", "banana", "cross", "ring", "diamond",
    "hexagon", "arrow", "house", "tree", "cup", "fish", "flower", "bolt", "hourglass", "umbrella",
)
TARGET_CLASS = "banana"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (240, 220, 40),
    "orange": (245, 140, 30), "purple": (140, 60, 180), "pink": (245, 140, 190), "white": (245, 245, 245),
    "black": (25, 25, 25), "gray": (128, 128, 128), "brown": (130, 80, 40), "cyan": (40, 210, 220),
}
# Fraction of the image side. Objects of 9–11 px on 32 px images were, with random colours and backgrounds, too hard
# for a tiny model to learn in minutes (a from-scratch classifier reached 66 % on 20 classes, 88 % with these sizes
# and the contrast rule below): web photos show their subject large and visible, so the world does too.
SIZES: dict[str, tuple[float, float]] = {"small": (0.38, 0.46), "large": (0.52, 0.64)}
MIN_CONTRAST = 110.0   # an object's colour is at least this far (RGB distance) from both background colours
P_TWO = 0.3            # the share of two-object (relational) scenes among the captioned pairs
REVISION = 2           # the world's rendering version: part of every cached split's key
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below", "next to")
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "noise", "grid")
SPLITS: dict[str, int] = {"pretrain": 0, "finetune": 1, "eval": 2, "val": 3}
SIMPLE_PREFIXES: tuple[str, ...] = ("a", "a photo of a", "a picture of a", "an image of a", "a drawing of a")


@dataclass(frozen=True)
class WorldObject:
    """One object in a scene: its class (shape), attributes and placement in unit coordinates."""

    shape: str
    colour: str
    size: str
    texture: str
    cx: float
    cy: float
    scale: float
    angle: float

    def adjectives(self) -> list[str]:
        """Adjectives in English order: size, texture (plain is unspoken), colour."""
        adjs = [self.size]
        if self.texture != "plain":
            adjs.append(self.texture)
        adjs.append(self.colour)
        return adjs


@dataclass(frozen=True)
class Scene:
    """The description of one image: a background and one or two objects, and the relation between them."""

    background: str
    background_rgb: tuple[tuple[int, int, int], tuple[int, int, int]]
    objects: tuple[WorldObject, ...]
    relation: str | None = None


@dataclass
class WorldData:
    """A split of the world held in memory: uint8 images (N, H, W, 3), captions and the subject's class index."""

    images: np.ndarray
    captions: list[str]
    labels: np.ndarray
    split: str
    seed: int
    class_names: tuple[str, ...] = field(default=CLASSES)

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, indices) -> "WorldData":
        idx = np.asarray(indices, dtype=np.int64)
        return WorldData(self.images[idx], [self.captions[i] for i in idx], self.labels[idx], self.split,
                         self.seed, self.class_names)


# ---------------------------------------------------------------------------------------------------------------
# Sampling scenes and writing captions
# ---------------------------------------------------------------------------------------------------------------

def contrasting_colours(background_rgb) -> list[str]:
    """The colour names that stand out against both background colours (at least :data:`MIN_CONTRAST` away in RGB);
    all colours when none does."""
    bg = [np.asarray(c, dtype=float) for c in background_rgb]
    far = [name for name, rgb in COLOURS.items()
           if min(np.linalg.norm(np.asarray(rgb, dtype=float) - c) for c in bg) >= MIN_CONTRAST]
    return far or list(COLOURS)


def _sample_object(rng: np.random.Generator, shape: str, box: tuple[float, float, float, float],
                   colours: list[str] | None = None) -> WorldObject:
    """An object of the given class with random attributes (its colour among ``colours``), centred at a random point
    inside ``box``."""
    size = ("small", "large")[rng.integers(2)]
    lo, hi = SIZES[size]
    scale = float(rng.uniform(lo, hi))
    x0, y0, x1, y1 = box
    half = scale / 2
    cx = float(rng.uniform(min(x0 + half, (x0 + x1) / 2), max(x1 - half, (x0 + x1) / 2)))
    cy = float(rng.uniform(min(y0 + half, (y0 + y1) / 2), max(y1 - half, (y0 + y1) / 2)))
    colours = colours or list(COLOURS)
    return WorldObject(shape=shape, colour=colours[rng.integers(len(colours))], size=size,
                       texture=TEXTURES[rng.integers(len(TEXTURES))], cx=cx, cy=cy, scale=scale,
                       angle=float(rng.uniform(-25, 25)))


def _boxes_for(relation: str, rng: np.random.Generator):
    """Regions (x0, y0, x1, y1) for subject and object so that the relation holds in the image."""
    left, right = (0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0)
    top, bottom = (0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 1.0)
    if relation == "next to":
        relation = ("left of", "right of")[rng.integers(2)]
    return {"left of": (left, right), "right of": (right, left),
            "above": (top, bottom), "below": (bottom, top)}[relation]


def _sample_background(rng: np.random.Generator):
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    a = tuple(int(v) for v in rng.integers(0, 256, 3))
    b = tuple(int(v) for v in rng.integers(0, 256, 3))
    return kind, (a, b)


def sample_scene(rng: np.random.Generator, single_object: bool = False, p_two: float = P_TWO,
                 shape: str | None = None) -> Scene:
    """Draw a scene description. ``single_object`` makes classification scenes (one object, label = its class)."""
    background, bg_rgb = _sample_background(rng)
    colours = contrasting_colours(bg_rgb)
    subject_shape = shape or CLASSES[rng.integers(len(CLASSES))]
    if single_object or rng.random() >= p_two:
        obj = _sample_object(rng, subject_shape, (0.0, 0.0, 1.0, 1.0), colours)
        obj = WorldObject(**{**obj.__dict__, "cx": float(rng.uniform(0.35, 0.65)),
                             "cy": float(rng.uniform(0.35, 0.65))})
        return Scene(background, bg_rgb, (obj,))
    relation = RELATIONS[rng.integers(len(RELATIONS))]
    subject_box, object_box = _boxes_for(relation, rng)
    other_shapes = [c for c in CLASSES if c != subject_shape]
    object_shape = other_shapes[rng.integers(len(other_shapes))]
    subject = _sample_object(rng, subject_shape, subject_box, colours)
    obj = _sample_object(rng, object_shape, object_box, colours)
    # Two objects side by side must fit in half the image: shrink the larger scales.
    subject = WorldObject(**{**subject.__dict__, "scale": min(subject.scale, 0.46)})
    obj = WorldObject(**{**obj.__dict__, "scale": min(obj.scale, 0.46)})
    return Scene(background, bg_rgb, (subject, obj), relation)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(obj: WorldObject, rng: np.random.Generator, keep_prob: float = 0.6) -> str:
    """'small striped red star', keeping each adjective with probability ``keep_prob`` (captions vary in detail)."""
    adjs = [a for a in obj.adjectives() if rng.random() < keep_prob]
    return " ".join(adjs + [obj.shape])


def caption_scene(scene: Scene, rng: np.random.Generator) -> str:
    """A caption with the (adj) subject – relation – (adj) object structure, or a simple one-object caption."""
    subject = scene.objects[0]
    if len(scene.objects) == 1:
        prefix = SIMPLE_PREFIXES[rng.integers(len(SIMPLE_PREFIXES))]
        phrase = _noun_phrase(subject, rng)
        prefix = prefix[:-1] + _article(phrase) if prefix.endswith(" a") or prefix == "a" else prefix
        return f"{prefix} {phrase}"
    first = _noun_phrase(subject, rng)
    second = _noun_phrase(scene.objects[1], rng)
    return f"{_article(first)} {first} {scene.relation} {_article(second)} {second}"


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------

def _shape_polygons(shape: str, n: int) -> list[tuple[str, list[float]]]:
    """Drawing primitives of a class in a unit box [-1, 1]² (before rotation and scaling).

    Each primitive is ('poly', [x0, y0, x1, y1, ...]), ('ellipse', [x0, y0, x1, y1]) or the same with a
    leading '-' to erase (holes, crescents)."""
    def regular(k, r=1.0, phase=-np.pi / 2):
        t = phase + 2 * np.pi * np.arange(k) / k
        return list(np.stack([r * np.cos(t), r * np.sin(t)], 1).ravel())

    def star(k=5, r_out=1.0, r_in=0.42):
        t = -np.pi / 2 + np.pi * np.arange(2 * k) / k
        r = np.where(np.arange(2 * k) % 2 == 0, r_out, r_in)
        return list(np.stack([r * np.cos(t), r * np.sin(t)], 1).ravel())

    def arc(r_out, r_in, t0, t1, m=24):
        t = np.linspace(t0, t1, m)
        outer = np.stack([r_out * np.cos(t), r_out * np.sin(t)], 1)
        inner = np.stack([r_in * np.cos(t[::-1]), r_in * np.sin(t[::-1])], 1)
        return list(np.concatenate([outer, inner]).ravel())

    table = {
        "circle": [("ellipse", [-1, -1, 1, 1])],
        "square": [("poly", [-0.85, -0.85, 0.85, -0.85, 0.85, 0.85, -0.85, 0.85])],
        "triangle": [("poly", regular(3, 1.1, -np.pi / 2))],
        "star": [("poly", star())],
        "heart": [("ellipse", [-1, -0.9, 0.05, 0.15]), ("ellipse", [-0.05, -0.9, 1, 0.15]),
                  ("poly", [-0.97, -0.25, 0.97, -0.25, 0, 1])],
        "moon": [("ellipse", [-1, -1, 1, 1]), ("-ellipse", [-0.45, -1.15, 1.35, 0.75])],
        "banana": [("poly", arc(1.0, 0.62, 0.15 * np.pi, 0.85 * np.pi))],
        "cross": [("poly", [-0.3, -1, 0.3, -1, 0.3, -0.3, 1, -0.3, 1, 0.3, 0.3, 0.3, 0.3, 1, -0.3, 1, -0.3, 0.3,
                            -1, 0.3, -1, -0.3, -0.3, -0.3])],
        "ring": [("ellipse", [-1, -1, 1, 1]), ("-ellipse", [-0.55, -0.55, 0.55, 0.55])],
        "diamond": [("poly", [0, -1, 0.65, 0, 0, 1, -0.65, 0])],
        "hexagon": [("poly", regular(6, 1.0, 0))],
        "arrow": [("poly", [-1, -0.25, 0.2, -0.25, 0.2, -0.7, 1, 0, 0.2, 0.7, 0.2, 0.25, -1, 0.25])],
        "house": [("poly", [-0.8, 1, -0.8, -0.1, 0, -1, 0.8, -0.1, 0.8, 1])],
        "tree": [("poly", [0, -1, 0.8, 0.45, -0.8, 0.45]), ("poly", [-0.18, 0.45, 0.18, 0.45, 0.18, 1, -0.18, 1])],
        "cup": [("poly", [-0.75, -0.7, 0.45, -0.7, 0.3, 0.9, -0.6, 0.9]), ("ellipse", [0.2, -0.4, 0.95, 0.4]),
                ("-ellipse", [0.4, -0.2, 0.75, 0.2])],
        "fish": [("ellipse", [-1, -0.5, 0.45, 0.5]), ("poly", [0.3, 0, 1, -0.6, 1, 0.6])],
        "flower": [("ellipse", [np.cos(t) * 0.55 - 0.42, np.sin(t) * 0.55 - 0.42,
                                np.cos(t) * 0.55 + 0.42, np.sin(t) * 0.55 + 0.42])
                   for t in np.linspace(0, 2 * np.pi, 6)[:-1]],
        "bolt": [("poly", [0.2, -1, -0.6, 0.15, -0.05, 0.15, -0.3, 1, 0.6, -0.2, 0.05, -0.2, 0.4, -1])],
        "hourglass": [("poly", [-0.75, -1, 0.75, -1, 0, 0]), ("poly", [0, 0, 0.75, 1, -0.75, 1])],
        "umbrella": [("poly", arc(1.0, 0.0, np.pi, 2 * np.pi)[:48] + [0, 0]),
                     ("poly", [-0.08, -0.05, 0.08, -0.05, 0.08, 0.95, -0.08, 0.95])],
    }
    return table[shape]


def _shape_mask(obj: WorldObject, canvas: int) -> np.ndarray:
    """A float mask in [0,1] of the object on a canvas of side ``canvas`` pixels."""
    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    half = obj.scale * canvas / 2
    cx, cy = obj.cx * canvas, obj.cy * canvas
    c, s = np.cos(np.deg2rad(obj.angle)), np.sin(np.deg2rad(obj.angle))

    def place(xs, ys):
        return cx + half * (c * xs - s * ys), cy + half * (s * xs + c * ys)

    for kind, coords in _shape_polygons(obj.shape, canvas):
        erase = kind.startswith("-")
        fill = 0 if erase else 255
        pts = np.asarray(coords, dtype=float).reshape(-1, 2)
        if kind.lstrip("-") == "ellipse":
            # Rotation of an ellipse's bounding box: approximate by its rotated polygon.
            (x0, y0), (x1, y1) = pts
            t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
            ex = (x0 + x1) / 2 + (x1 - x0) / 2 * np.cos(t)
            ey = (y0 + y1) / 2 + (y1 - y0) / 2 * np.sin(t)
            pts = np.stack([ex, ey], 1)
        px, py = place(pts[:, 0], pts[:, 1])
        draw.polygon(list(zip(px.tolist(), py.tolist())), fill=fill)
    return np.asarray(img, dtype=np.float32) / 255.0


def _contrast_colour(rgb: np.ndarray) -> np.ndarray:
    """The second colour of a texture: white on dark colours, black on light ones."""
    return np.full(3, 20.0) if rgb.mean() > 140 else np.full(3, 235.0)


def _texture(obj: WorldObject, canvas: int, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The object's fill (canvas, canvas, 3): plain, striped, dotted or checkered in its colour."""
    fill = np.broadcast_to(rgb, (canvas, canvas, 3)).astype(np.float32)
    if obj.texture == "plain":
        return fill
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float32)
    period = canvas / rng.uniform(5.0, 7.0)
    if obj.texture == "striped":
        theta = rng.uniform(0, np.pi)
        on = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period) > 0.2
    elif obj.texture == "dotted":
        u, v = (xx % period) - period / 2, (yy % period) - period / 2
        on = u * u + v * v < (0.28 * period) ** 2
    else:  # checkered
        on = ((xx // (period / 2)) + (yy // (period / 2))) % 2 == 0
    return np.where(on[..., None], _contrast_colour(rgb), fill).astype(np.float32)


def _background(scene: Scene, canvas: int, rng: np.random.Generator) -> np.ndarray:
    a, b = (np.asarray(c, dtype=np.float32) for c in scene.background_rgb)
    if scene.background == "plain":
        return np.broadcast_to(a, (canvas, canvas, 3)).copy()
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float32) / canvas
    if scene.background == "gradient":
        t = (xx * np.cos(rng.uniform(0, 2 * np.pi)) + yy * np.sin(rng.uniform(0, 2 * np.pi))) % 1.0
        return a + (b - a) * t[..., None]
    if scene.background == "noise":
        coarse = rng.random((4, 4, 1)).astype(np.float32)
        t = np.asarray(Image.fromarray((coarse[..., 0] * 255).astype(np.uint8)).resize(
            (canvas, canvas), Image.BICUBIC), dtype=np.float32)[..., None] / 255.0
        return a + (b - a) * t
    on = ((xx * 8).astype(int) % 4 == 0) | ((yy * 8).astype(int) % 4 == 0)  # grid
    return np.where(on[..., None], b, a).astype(np.float32)


def render(scene: Scene, image_size: int, rng: np.random.Generator, supersample: int = 2,
           noise_std: float = 6.0) -> np.ndarray:
    """Render a scene to a uint8 (H, W, 3) image: background, textured objects, pixel noise.

    Drawing happens at ``supersample``× resolution and is box-filtered down, which anti-aliases the shapes.
    """
    canvas = image_size * supersample
    img = _background(scene, canvas, rng)
    for obj in scene.objects:
        rgb = np.asarray(COLOURS[obj.colour], dtype=np.float32) + rng.normal(0, 12, 3).astype(np.float32)
        mask = _shape_mask(obj, canvas)[..., None]
        img = img * (1 - mask) + _texture(obj, canvas, np.clip(rgb, 0, 255), rng) * mask
    img = img.reshape(image_size, supersample, image_size, supersample, 3).mean(axis=(1, 3))
    img = img + rng.normal(0, noise_std, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------------------

def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one sample: independent of how many samples are drawn or in which order."""
    return np.random.default_rng([int(seed), SPLITS[split], int(index)])


def make_sample(seed: int, split: str, index: int, image_size: int) -> tuple[np.ndarray, str, int]:
    """One (image, caption, label) triple. ``eval`` and ``val`` samples are single-object classification scenes
    cycling through the classes, so that every class is equally represented."""
    rng = sample_rng(seed, split, index)
    classification = split in ("eval", "val")
    shape = CLASSES[index % len(CLASSES)] if classification else None
    scene = sample_scene(rng, single_object=classification, shape=shape)
    caption = caption_scene(scene, rng)
    return render(scene, image_size, rng), caption, CLASSES.index(scene.objects[0].shape)


def make_split(split: str, n: int, seed: int = 0, image_size: int = 32, progress: bool = False, first: int = 0,
               workers: int = 1) -> WorldData:
    """Generate samples ``first … first + n − 1`` of a split (``first=0``: the first ``n``). The same (split, index,
    seed, image_size) → the same bytes, however the samples are generated: ``workers`` processes draw them in
    interleaved chunks."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels for shapes to be recognisable, got {image_size}")
    from clipdef.env import progress_bar

    images = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    captions, labels = [None] * n, np.empty(n, dtype=np.int64)
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        chunks = [range(start, min(start + 1000, n)) for start in range(0, n, 1000)]
        from clipdef.env import end_with_parent

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=end_with_parent) as pool:
            done = pool.map(_make_samples, [(seed, split, first + c.start, len(c), image_size) for c in chunks])
            for chunk, (imgs, caps, labs) in progress_bar(zip(chunks, done), enabled=progress, total=len(chunks),
                                                        desc=f"world:{split}"):
                images[chunk.start:chunk.stop], labels[chunk.start:chunk.stop] = imgs, labs
                captions[chunk.start:chunk.stop] = caps
        return WorldData(images, captions, labels, split, seed)
    for i in progress_bar(range(n), desc=f"world:{split}", enabled=progress, mininterval=1.0):
        images[i], captions[i], labels[i] = make_sample(seed, split, first + i, image_size)
    return WorldData(images, captions, labels, split, seed)


def _make_samples(args) -> tuple[np.ndarray, list[str], np.ndarray]:
    seed, split, first, n, image_size = args
    data = make_split(split, n, seed=seed, image_size=image_size, first=first)
    return data.images, data.captions, data.labels
