"""Write the embedded glyphs as a folder in Omniglot's layout, to exercise the real-data path.

    python examples/glyphs_to_omniglot.py /tmp/glyph-omniglot
    metareg run protonet -b omniglot --set data_dir=/tmp/glyph-omniglot --steps 100

The folder is what the unzipped images_background.zip / images_evaluation.zip of
brendenlake/omniglot look like: ``images_background/<alphabet>/<character>/<drawer>.png``, black
strokes on a white 105x105 canvas (the `omniglot` benchmark inverts and resizes them back to 28x28).
The glyphs' evaluation groups go to images_evaluation, the others to images_background, so
``--set split=lake`` reproduces the glyphs' group split and the default ``vinyals`` split
reshuffles characters as it does for the real Omniglot.

Nothing here is specific to glyphs: the same commands run on the real Omniglot once its two
folders are unpacked under a data directory.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

from metareg.tasks.glyphs import EVALUATION_GROUPS, GlyphsConfig, load_glyphs

SIZE = 105  # Omniglot's image size


def export(out: Path) -> int:
    gs = load_glyphs(GlyphsConfig())
    written = 0
    for c in range(gs.images.shape[0]):
        group = gs.group_names[int(gs.groups[c])]
        folder = "images_evaluation" if group in EVALUATION_GROUPS else "images_background"
        char_dir = out / folder / group / f"character{int(gs.codepoints[c]):05X}"
        char_dir.mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(gs.images[c]):
            ink = Image.fromarray(img).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
            path = char_dir / f"{i + 1:02d}.png"
            tmp = path.with_suffix(".png.tmp")
            Image.fromarray(255 - np.asarray(ink)).save(tmp, format="PNG")
            os.replace(tmp, path)  # an interrupted export never leaves a half-written image
            written += 1
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder to create (images_background/ and images_evaluation/ go inside)")
    n = export(ap.parse_args().out)
    print(f"wrote {n} images")


if __name__ == "__main__":
    main()
