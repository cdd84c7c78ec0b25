"""``glyphs``: an Omniglot-like dataset generated on the spot from fonts matplotlib ships.

Classes are characters of many scripts and symbol sets (Latin, IPA, Greek, Cyrillic, Armenian,
Hebrew, Arabic, N'Ko, Lao, Georgian, Canadian syllabics, Ogham, Tifinagh, Lisu, arrows, math,
box drawing, tetragrams ...), rendered from the DejaVu fonts in ``matplotlib/mpl-data``; each
Unicode block (or a slice of a large one) is an alphabet-like group.  Only code points the font
maps to a real glyph are used (read from the font's cmap with fontTools), accented letters (those
with a canonical decomposition) and combining marks are left out, and a class whose rendering is
nearly the same as an earlier one (Latin A / Greek Alpha / Cyrillic A) is dropped, so no two
classes look alike.

Each instance is the character in one of the DejaVu faces that cover it (Sans, Sans Bold, Serif,
Serif Bold, Mono: the "drawers"), with a random stroke width, a random affine map (rotation,
anisotropic scale, shear, shift) and a smooth random elastic displacement, drawn at 56x56 and
averaged down to 28x28 grayscale, ink = 1 on a 0 background.

Splits are by group, fixed in :data:`EVALUATION_GROUPS` and :data:`VALIDATION_GROUPS`, like
Omniglot's background/evaluation alphabets.  The array is generated once (a few seconds) and
cached as ``glyphs-v1.npz`` with a SHA-256 of its contents; a missing, stale or corrupt cache is
rebuilt, and a new cache is written to a temporary file and renamed, so an interrupted generation
never leaves a broken file behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import unicodedata
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import config, param
from ..errors import ConfigError, DataError
from .episodes import ClassPool, EpisodeConfig, EpisodicImages

__all__ = ["GlyphsConfig", "Glyphs", "GROUPS", "EVALUATION_GROUPS", "VALIDATION_GROUPS", "load_glyphs",
           "generate_glyphs", "cache_root"]

log = logging.getLogger(__name__)

VERSION = 1
#: (group, code point ranges); order matters: it fixes class ids and which duplicate survives
GROUPS: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = (
    ("latin", ((0x41, 0x5A), (0x61, 0x7A))),
    ("latin_extended", ((0x180, 0x24F), (0x1E00, 0x1EFF), (0x2C60, 0x2C7F))),
    ("ipa", ((0x250, 0x2AF),)),
    ("phonetic", ((0x1D00, 0x1DBF),)),
    ("latin_extended_d", ((0xA720, 0xA7FF),)),
    ("greek", ((0x370, 0x3FF),)),
    ("cyrillic", ((0x400, 0x45F),)),
    ("cyrillic_extended", ((0x460, 0x52F), (0xA640, 0xA69F))),
    ("armenian", ((0x531, 0x58F),)),
    ("hebrew", ((0x5D0, 0x5EA),)),
    ("arabic", ((0x620, 0x6FF),)),
    ("arabic_forms", ((0xFE70, 0xFEFF),)),
    ("nko", ((0x7C0, 0x7FF),)),
    ("lao", ((0xE80, 0xEFF),)),
    ("georgian", ((0x10A0, 0x10FF),)),
    ("georgian_nuskhuri", ((0x2D00, 0x2D2F),)),
    ("canadian_a", ((0x1400, 0x147F),)),
    ("canadian_b", ((0x1480, 0x14FF),)),
    ("canadian_c", ((0x1500, 0x15FF),)),
    ("canadian_d", ((0x1600, 0x167F),)),
    ("ogham", ((0x1680, 0x169F),)),
    ("tifinagh", ((0x2D30, 0x2D7F),)),
    ("lisu", ((0xA4D0, 0xA4FF),)),
    ("letterlike", ((0x2100, 0x218F),)),
    ("arrows", ((0x2190, 0x21FF), (0x27F0, 0x27FF), (0x2900, 0x297F), (0x2B00, 0x2BFF))),
    ("math_operators", ((0x2200, 0x22FF),)),
    ("math_misc", ((0x27C0, 0x27EF), (0x2980, 0x29FF), (0x2A00, 0x2AFF))),
    ("technical", ((0x2300, 0x23FF),)),
    ("box_drawing", ((0x2500, 0x257F),)),
    ("geometric", ((0x25A0, 0x25FF),)),
    ("symbols", ((0x2600, 0x26FF),)),
    ("dingbats", ((0x2700, 0x27BF),)),
    ("braille", ((0x2800, 0x28FF),)),
    ("tetragram", ((0x1D300, 0x1D35F),)),
)
#: held out for evaluation: scripts and symbol sets of every kind, about a third of the classes
EVALUATION_GROUPS = ("armenian", "hebrew", "nko", "georgian", "canadian_c", "tifinagh", "latin_extended_d",
                     "technical", "geometric", "arrows", "box_drawing")
#: held out for model selection (never trained on, never in the final evaluation)
VALIDATION_GROUPS = ("lao", "ogham", "canadian_d", "math_misc", "cyrillic_extended")

FACES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf")
HI = 56  # drawing resolution: strokes and warps are done at twice the output size, then averaged down
OUT = 28
FONT_PX = 40  # ascender-to-descender size; glyphs larger than BOX are shrunk, smaller ones kept small
BOX = 42
MIN_SIDE = 10  # a glyph whose larger side is below this (a dot, a comma) is no character to learn
MAX_INK = 0.42  # filled blobs (block elements, solid shapes) are left out
DUPLICATE_COSINE = 0.93


@config
class GlyphsConfig(EpisodeConfig):
    instances: int = param(20, "instances generated per class (like Omniglot's 20 drawers)", ge=2)
    max_per_group: int = param(60, "at most this many classes per group (0: all that survive de-duplication)", ge=0)
    # not `seed`: that bare key belongs to the run, and --set seed=1 must stay unambiguous
    generation_seed: int = param(0, "seed of the instance perturbations (part of the cache key)")
    cache_dir: str = param("", "folder of the generated cache (empty: $METAREG_CACHE or ~/.cache/metareg)")


def cache_root(cache_dir: str = "") -> Path:
    return Path(cache_dir or os.environ.get("METAREG_CACHE") or Path.home() / ".cache" / "metareg").expanduser()


@dataclasses.dataclass(frozen=True)
class GlyphSet:
    images: np.ndarray  # uint8 [C, I, 28, 28]
    codepoints: np.ndarray  # int64 [C]
    groups: np.ndarray  # int64 [C], index into group_names
    group_names: tuple[str, ...]

    def classes_of(self, names: set[str]) -> np.ndarray:
        wanted = np.array([g in names for g in self.group_names])
        return np.nonzero(wanted[self.groups])[0]


# -- rendering ---------------------------------------------------------------------------------
def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=None)
def _cmap(face: str) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    path = _font_dir() / face
    if not path.is_file():
        raise DataError(f"glyphs renders from matplotlib's DejaVu fonts, but {path} is missing; reinstall matplotlib.")
    with TTFont(str(path), lazy=True) as font:
        return frozenset(font.getBestCmap())


def _usable(cp: int) -> bool:
    ch = chr(cp)
    if unicodedata.category(ch)[0] in "MZC":  # marks, spaces, controls
        return False
    dec = unicodedata.decomposition(ch)
    return not dec or dec.startswith("<")  # canonical decompositions are accented copies of a base letter


def _render(cp: int, face: str) -> np.ndarray:
    """The glyph centred on a HI x HI float canvas, shrunk (never enlarged) to fit BOX."""
    from PIL import Image, ImageDraw

    font = _pil_font(face)
    ch = chr(cp)
    canvas = Image.new("L", (3 * FONT_PX, 3 * FONT_PX), 0)
    ImageDraw.Draw(canvas).text((FONT_PX, FONT_PX), ch, fill=255, font=font)
    bbox = canvas.getbbox()
    out = np.zeros((HI, HI), np.float32)
    if bbox is None:
        return out
    glyph = canvas.crop(bbox)
    w, h = glyph.size
    s = min(1.0, BOX / max(w, h))
    if s < 1.0:
        glyph = glyph.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
        w, h = glyph.size
    x0, y0 = (HI - w) // 2, (HI - h) // 2
    out[y0:y0 + h, x0:x0 + w] = np.asarray(glyph, np.float32) / 255.0
    return out


@lru_cache(maxsize=None)
def _pil_font(face: str):
    from PIL import ImageFont

    return ImageFont.truetype(str(_font_dir() / face), FONT_PX)


@lru_cache(maxsize=4)
def _select_classes(max_per_group: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[str, ...]]:
    """Code points and group ids of the classes: real glyphs, no accents, no look-alikes."""
    base = _cmap(FACES[0])
    cands: list[tuple[int, int]] = []
    for gi, (_, ranges) in enumerate(GROUPS):
        for lo, hi in ranges:
            cands += [(cp, gi) for cp in range(lo, hi + 1) if cp in base and _usable(cp)]
    renders = np.stack([_render(cp, FACES[0]) for cp, _ in cands])
    rows, cols = renders.max(2) > 0.2, renders.max(1) > 0.2
    side = np.maximum(rows.sum(1), cols.sum(1))
    ink = renders.mean((1, 2))
    ok = (side >= MIN_SIDE) & (ink <= MAX_INK)
    # look-alikes: cosine similarity of blurred 14x14 renders; earlier groups keep their class
    small = torch.from_numpy(renders).unsqueeze(1)
    small = F.avg_pool2d(F.avg_pool2d(small, 3, 1, 1), 4).flatten(1)
    small = F.normalize(small, dim=1).numpy()
    sim = small @ small.T
    kept: list[int] = []
    for i in np.nonzero(ok)[0]:
        if not kept or sim[i, kept].max() < DUPLICATE_COSINE:
            kept.append(int(i))
    per_group: dict[int, list[int]] = {}
    for i in kept:
        per_group.setdefault(cands[i][1], []).append(cands[i][0])
    cps, gids = [], []
    for gi in sorted(per_group):
        members = per_group[gi]
        if max_per_group and len(members) > max_per_group:
            # evenly spaced over the block keeps every series of a syllabary, not just the first
            pick = np.linspace(0, len(members) - 1, max_per_group).round().astype(int)
            members = [members[j] for j in pick]
        cps += members
        gids += [gi] * len(members)
    return tuple(cps), tuple(gids), tuple(g for g, _ in GROUPS)


def _perturb(base: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """base [B, 1, HI, HI] -> [B, 28, 28] uint8: stroke width, affine, elastic, downsample."""
    b = base.shape[0]
    u = lambda lo, hi, *shape: torch.rand(*(shape or (b,)), generator=g) * (hi - lo) + lo  # noqa: E731
    # stroke width: thicker for a third of the instances, thinner (only where it will not vanish) for a sixth
    r = torch.rand(b, generator=g)
    thick = F.max_pool2d(base, 3, 1, 1)
    thin = -F.max_pool2d(-base, 3, 1, 1)
    keeps_ink = thin.flatten(1).amax(1) > 0.5
    x = torch.where((r < 1 / 3).view(b, 1, 1, 1), thick, base)
    x = torch.where(((r > 5 / 6) & keeps_ink).view(b, 1, 1, 1), thin, x)
    # affine: output -> input sampling map, so the drawn glyph is rotated/scaled/sheared/shifted
    ang = (torch.randn(b, generator=g) * 0.14).clamp(-0.35, 0.35)
    scale = u(0.85, 1.12)
    sx, sy = scale * u(0.9, 1.1), scale * u(0.9, 1.1)
    shear = u(-0.25, 0.25)
    cos, sin = torch.cos(ang), torch.sin(ang)
    a = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    a = a @ torch.stack([torch.stack([1 / sx, shear / sx], -1), torch.stack([torch.zeros(b), 1 / sy], -1)], -2)
    shift = torch.stack([u(-0.1, 0.1), u(-0.1, 0.1)], -1)
    theta = torch.cat([a, shift.unsqueeze(-1)], -1)
    grid = F.affine_grid(theta, [b, 1, HI, HI], align_corners=False)
    # elastic: a smooth random field (a 5x5 grid of offsets, bicubically upsampled), as in Simard et al. 2003
    coarse = torch.randn(b, 2, 5, 5, generator=g) * 0.035
    field = F.interpolate(coarse, size=(HI, HI), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    x = F.grid_sample(x, grid + field, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = F.avg_pool2d(x, HI // OUT).squeeze(1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def generate_glyphs(instances: int, max_per_group: int, seed: int, *, progress: bool | None = None) -> GlyphSet:
    """Render every class in every face that has it, then draw ``instances`` perturbed copies."""
    from tqdm.auto import tqdm

    cps, gids, names = _select_classes(max_per_group)
    covers = [[f for f in FACES if cp in _cmap(f)] for cp in cps]
    g = torch.Generator().manual_seed(seed)
    images = np.empty((len(cps), instances, OUT, OUT), np.uint8)
    chunk = max(1, 4096 // instances)
    bar = tqdm(total=len(cps), desc="generating glyphs (once, then cached)", unit="class", leave=False,
               disable=None if progress is None else not progress)
    for start in range(0, len(cps), chunk):
        stop = min(len(cps), start + chunk)
        bases = []
        for c in range(start, stop):
            faces = torch.randint(len(covers[c]), (instances,), generator=g)
            renders = {f: torch.from_numpy(_render(cps[c], covers[c][f])) for f in faces.unique().tolist()}
            bases.append(torch.stack([renders[f] for f in faces.tolist()]))
        base = torch.stack(bases).view(-1, 1, HI, HI)
        images[start:stop] = _perturb(base, g).view(stop - start, instances, OUT, OUT).numpy()
        bar.update(stop - start)
    bar.close()
    return GlyphSet(images, np.asarray(cps, np.int64), np.asarray(gids, np.int64), tuple(names))


# -- cache -----------------------------------------------------------------------------------
def _key(instances: int, max_per_group: int, seed: int) -> dict:
    return {"version": VERSION, "instances": instances, "max_per_group": max_per_group, "seed": seed,
            "groups": [[n, [list(r) for r in rs]] for n, rs in GROUPS]}


def _digest(gs: GlyphSet) -> str:
    h = hashlib.sha256()
    for a in (gs.images, gs.codepoints, gs.groups):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update("\n".join(gs.group_names).encode())
    return h.hexdigest()


def cache_path(cfg: GlyphsConfig) -> Path:
    default = GlyphsConfig()
    same = (cfg.instances, cfg.max_per_group, cfg.generation_seed) == (default.instances, default.max_per_group,
                                                                  default.generation_seed)
    if same:
        name = f"glyphs-v{VERSION}.npz"
    else:
        tag = hashlib.sha256(json.dumps(_key(cfg.instances, cfg.max_per_group, cfg.generation_seed)).encode()).hexdigest()[:10]
        name = f"glyphs-v{VERSION}-{tag}.npz"
    return cache_root(cfg.cache_dir) / name


def _read(path: Path, key: dict) -> GlyphSet | None:
    """The cached set, or None (with the reason logged) when it is missing, stale or corrupt."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            gs = GlyphSet(z["images"], z["codepoints"], z["groups"], tuple(str(s) for s in z["group_names"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        log.warning("glyphs cache %s is unreadable (%s); regenerating it", path, e)
        return None
    if meta.get("key") != key:
        log.warning("glyphs cache %s was made with other settings; regenerating it", path)
        return None
    if meta.get("sha256") != _digest(gs):
        log.warning("glyphs cache %s fails its checksum (corrupt); regenerating it", path)
        return None
    return gs


def _write(path: Path, gs: GlyphSet, key: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise DataError(f"cannot write the glyphs cache in {path.parent} ({e.strerror or e}); set cache_dir "
                        "(--set cache_dir=...) or METAREG_CACHE to a writable folder.") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, images=gs.images, codepoints=gs.codepoints, groups=gs.groups,
                                group_names=np.asarray(gs.group_names),
                                meta=np.asarray(json.dumps({"key": key, "sha256": _digest(gs)})))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_glyphs(cfg: GlyphsConfig, *, progress: bool | None = None) -> GlyphSet:
    """The glyph set for ``cfg``'s generation settings, from the cache or freshly generated."""
    path = cache_path(cfg)
    key = _key(cfg.instances, cfg.max_per_group, cfg.generation_seed)
    gs = _read(path, key)
    if gs is None:
        log.info("generating the glyphs dataset into %s", path)
        gs = generate_glyphs(cfg.instances, cfg.max_per_group, cfg.generation_seed, progress=progress)
        _write(path, gs, key)
    return gs


class Glyphs(EpisodicImages):
    """Episodes over the generated glyphs: background groups for training, :data:`VALIDATION_GROUPS`
    for ``split='val'``, :data:`EVALUATION_GROUPS` for ``split='test'``."""

    def __init__(self, config: GlyphsConfig) -> None:
        super().__init__(config)
        gs = load_glyphs(config)
        held = set(EVALUATION_GROUPS) | set(VALIDATION_GROUPS)
        train = gs.classes_of(set(gs.group_names) - held)
        splits = {"train": train, "val": gs.classes_of(set(VALIDATION_GROUPS)),
                  "test": gs.classes_of(set(EVALUATION_GROUPS))}
        images = torch.from_numpy(gs.images)
        self.glyphs = gs
        self.pools = {}
        for split, idx in splits.items():
            if len(idx) == 0:
                raise ConfigError(f"glyphs: the {split} split is empty with max_per_group={config.max_per_group}.")
            sub = images[torch.from_numpy(idx)]
            self.pools[split] = ClassPool(sub.reshape(-1, 1, OUT, OUT), [config.instances] * len(idx), name=split,
                                          class_names=[f"{gs.group_names[gs.groups[i]]}/U+{gs.codepoints[i]:04X}" for i in idx])
        self._finish((1, OUT, OUT))
