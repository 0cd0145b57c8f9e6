"""Concept images: procedurally drawn shapes with pixel-level ground truth for every concept.

Each image shows a noisy light-grey background, ONE target object whose shape (from SHAPES)
is the label, and ONE distractor (from DISTRACTORS) that never defines the label. Colour and
texture of both objects are drawn independently of the label: they are nuisance concepts,
shape is the causal one. The two objects never overlap.

    >>> data = make_concept_dataset(500, seed=0)
    >>> data["images"].shape, data["labels"][:4], data["masks"]["shape:circle"].shape
    >>> concept_names("texture")                # ['texture:solid', 'texture:stripes', 'texture:dots']
"""
from __future__ import annotations

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle", "cross")
DISTRACTORS = ("ring", "bar")
COLOURS = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.10),
}
TEXTURES = ("solid", "stripes", "dots")
FAMILIES = ("shape", "colour", "texture", "object")

TARGET_SIZE = (14, 24)      # object diameter in pixels (inclusive range)
DISTRACTOR_SIZE = (10, 16)
GAP = 2                     # minimum number of background pixels between the two objects
MIN_SIZE = 60               # smallest canvas on which any target leaves room for any distractor
SHADE = 0.5                 # stripes and dots are drawn in this fraction of the colour
NOISE = 0.03                # std of the (uniform) pixel noise


def concept_names(family: str | None = None) -> list[str]:
    """Mask names of one family ('shape', 'colour', 'texture', 'object'), or all of them."""
    names = {
        "shape": [f"shape:{s}" for s in SHAPES + DISTRACTORS],
        "colour": [f"colour:{c}" for c in COLOURS],
        "texture": [f"texture:{t}" for t in TEXTURES],
        "object": ["target", "distractor"],
    }
    if family is None:
        return [n for fam in FAMILIES for n in names[fam]]
    if family not in names:
        raise ValueError(f"unknown family '{family}'; choose from {FAMILIES}")
    return names[family]


def _silhouette(shape: str, u: np.ndarray, v: np.ndarray, horizontal: np.ndarray) -> np.ndarray:
    """Boolean mask of `shape` in normalised coordinates (u right, v down, object in [-1, 1]²)."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.85
    if shape == "triangle":  # apex up, base at the bottom
        return (v <= 0.85) & (au <= (v + 1.0) / 1.85)
    if shape == "cross":
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.36)
    if shape == "bar":
        h = horizontal[:, None, None]
        return np.where(h, (au <= 1.0) & (av <= 0.35), (av <= 1.0) & (au <= 0.35))
    raise ValueError(shape)


def _pattern(size: int) -> dict[str, np.ndarray]:
    """Where each texture uses the darker shade (size×size booleans)."""
    yy, xx = np.mgrid[:size, :size]
    return {
        "solid": np.zeros((size, size), bool),
        "stripes": ((xx + yy) // 2) % 2 == 1,                      # diagonal stripes, 2 px wide
        "dots": (xx % 5 - 2) ** 2 + (yy % 5 - 2) ** 2 <= 2,        # dot grid, period 5 px
    }


def _draw_params(rng: np.random.Generator, n: int, size: int, force: dict) -> dict:
    """Per-image shapes, colours, textures, sizes and centres (numpy arrays of length n)."""
    p = {
        "t_shape": rng.integers(0, len(SHAPES), n),
        "t_colour": rng.integers(0, len(COLOURS), n),
        "t_texture": rng.integers(0, len(TEXTURES), n),
        "t_size": rng.integers(TARGET_SIZE[0], TARGET_SIZE[1] + 1, n),
        "d_shape": rng.integers(0, len(DISTRACTORS), n),
        "d_colour": rng.integers(0, len(COLOURS), n),
        "d_texture": rng.integers(0, len(TEXTURES), n),
        "d_size": rng.integers(DISTRACTOR_SIZE[0], DISTRACTOR_SIZE[1] + 1, n),
        "d_horizontal": rng.random(n) < 0.5,
        "background": rng.uniform(0.72, 0.85, n),
    }
    for key, value in force.items():
        p[key][:] = value
    # target centre: uniform over the integer positions that keep it inside the canvas
    half_t = p["t_size"] / 2
    lo, hi = np.ceil(half_t), size - 1 - np.ceil(half_t)
    p["t_cy"] = np.floor(lo + rng.random(n) * (hi - lo + 1))
    p["t_cx"] = np.floor(lo + rng.random(n) * (hi - lo + 1))
    # distractor centre: uniform over the integer positions inside the canvas and clear of the target
    half_d = p["d_size"] / 2
    c = np.arange(size)[None, :]
    inside = (c >= np.ceil(half_d)[:, None]) & (c <= size - 1 - np.ceil(half_d)[:, None])
    need = (half_t + half_d + GAP)[:, None]
    clear_y = np.abs(c - p["t_cy"][:, None]) >= need
    clear_x = np.abs(c - p["t_cx"][:, None]) >= need
    valid = inside[:, :, None] & inside[:, None, :] & (clear_y[:, :, None] | clear_x[:, None, :])
    score = np.where(valid, rng.random(valid.shape), -1.0).reshape(n, -1).argmax(1)
    p["d_cy"], p["d_cx"] = np.divmod(score, size)
    return p


def _generate(n: int, seed: int, size: int, force: dict | None = None) -> dict:
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels so that both objects always fit")
    rng = np.random.default_rng(seed)
    p = _draw_params(rng, n, size, force or {})
    grid = np.arange(size, dtype=np.float32)
    patterns = _pattern(size)
    palette = np.array(list(COLOURS.values()), np.float32)

    def objects(prefix: str, names: tuple[str, ...]) -> np.ndarray:
        half = (p[f"{prefix}_size"] / 2).astype(np.float32)[:, None, None]
        u = (grid[None, None, :] - p[f"{prefix}_cx"][:, None, None]) / half  # (n, 1, size)
        v = (grid[None, :, None] - p[f"{prefix}_cy"][:, None, None]) / half  # (n, size, 1)
        mask = np.zeros((n, size, size), bool)
        for i, name in enumerate(names):
            sel = p[f"{prefix}_shape"] == i
            if sel.any():
                mask[sel] = _silhouette(name, u[sel], v[sel], p["d_horizontal"][sel])
        return mask

    target, distractor = objects("t", SHAPES), objects("d", DISTRACTORS)
    masks = {"target": target, "distractor": distractor}
    masks.update({f"shape:{s}": target & (p["t_shape"] == i)[:, None, None] for i, s in enumerate(SHAPES)})
    masks.update({f"shape:{s}": distractor & (p["d_shape"] == i)[:, None, None]
                  for i, s in enumerate(DISTRACTORS)})
    for family, names in (("colour", tuple(COLOURS)), ("texture", TEXTURES)):
        for i, name in enumerate(names):
            masks[f"{family}:{name}"] = (target & (p[f"t_{family}"] == i)[:, None, None]) | (
                distractor & (p[f"d_{family}"] == i)[:, None, None])

    dark = np.stack([patterns[t] for t in TEXTURES])                      # (textures, size, size)
    shade_t = np.where(dark[p["t_texture"]], np.float32(SHADE), np.float32(1.0))
    shade_d = np.where(dark[p["d_texture"]], np.float32(SHADE), np.float32(1.0))
    background = p["background"].astype(np.float32)[:, None, None]
    # uniform pixel noise of std NOISE on top of the flat colours
    images = (rng.random((n, 3, size, size), dtype=np.float32) - 0.5) * np.float32(NOISE * 12 ** 0.5)
    for ch in range(3):
        col_t = palette[p["t_colour"], ch][:, None, None]
        col_d = palette[p["d_colour"], ch][:, None, None]
        images[:, ch] += np.where(target, col_t * shade_t, np.where(distractor, col_d * shade_d, background))
    np.clip(images, 0.0, 1.0, out=images)

    def bboxes(mask: np.ndarray) -> np.ndarray:  # (n, 4) as x0, y0, x1, y1 with x1, y1 exclusive
        rows, cols = mask.any(2), mask.any(1)
        return np.stack([cols.argmax(1), rows.argmax(1),
                         size - cols[:, ::-1].argmax(1), size - rows[:, ::-1].argmax(1)], 1)

    colours = list(COLOURS)
    t_box, d_box = bboxes(target).tolist(), bboxes(distractor).tolist()
    meta = [{
        "label": int(p["t_shape"][k]),
        "background": float(p["background"][k]),
        "target": {"shape": SHAPES[p["t_shape"][k]], "colour": colours[p["t_colour"][k]],
                   "texture": TEXTURES[p["t_texture"][k]], "size": int(p["t_size"][k]),
                   "centre": (int(p["t_cx"][k]), int(p["t_cy"][k])), "bbox": tuple(t_box[k])},
        "distractor": {"shape": DISTRACTORS[p["d_shape"][k]], "colour": colours[p["d_colour"][k]],
                       "texture": TEXTURES[p["d_texture"][k]], "size": int(p["d_size"][k]),
                       "centre": (int(p["d_cx"][k]), int(p["d_cy"][k])), "bbox": tuple(d_box[k]),
                       "orientation": ("horizontal" if p["d_horizontal"][k] else "vertical")
                       if p["d_shape"][k] == DISTRACTORS.index("bar") else None},
    } for k in range(n)]
    return {
        "images": torch.from_numpy(images),
        "labels": torch.from_numpy(p["t_shape"].astype(np.int64)),
        "masks": {name: torch.from_numpy(masks[name]) for name in concept_names()},
        "meta": meta,
    }


def make_concept_dataset(n: int, seed: int = 0, size: int = 64) -> dict:
    """Draw `n` concept images of `size`×`size` pixels (size ≥ 60), deterministic given `seed`.

    Returns a dict with
      images  float32 (n, 3, size, size) in [0, 1]
      labels  int64 (n,): index in SHAPES of the target's shape
      masks   concept name → bool (n, size, size): 'shape:<s>' for SHAPES and DISTRACTORS,
              'colour:<c>', 'texture:<t>' (either object), 'target', 'distractor'
      meta    one dict per image: label, background grey level, and for 'target' and
              'distractor' their shape, colour, texture, size, centre (x, y) and
              bbox (x0, y0, x1, y1), exclusive ends, i.e. mask[y0:y1, x0:x1]
    """
    return _generate(n, seed, size)


def _forcing(concept: str) -> dict:
    """The generator parameters that make `concept` present in every image."""
    family, _, value = concept.partition(":")
    if family == "shape" and value in SHAPES:
        return {"t_shape": SHAPES.index(value)}
    if family == "shape" and value in DISTRACTORS:
        return {"d_shape": DISTRACTORS.index(value)}
    if family == "colour" and value in COLOURS:
        return {"t_colour": list(COLOURS).index(value)}
    if family == "texture" and value in TEXTURES:
        return {"t_texture": TEXTURES.index(value)}
    if concept in ("target", "distractor"):
        return {}
    raise ValueError(f"unknown concept '{concept}'; choose from {concept_names()}")


def concept_examples(concept: str, n: int, seed: int = 0, size: int = 64) -> torch.Tensor:
    """`n` images (n, 3, size, size) in which `concept` is present, e.g. for TCAV concept sets.

    Shape concepts fix the target's (SHAPES) or the distractor's (DISTRACTORS) shape; colour
    and texture concepts fix the target's colour or texture; everything else stays random.
    """
    return _generate(n, seed, size, _forcing(concept))["images"]
