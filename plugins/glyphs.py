"""``glyphs``: the embedded Omniglot-like few-shot benchmark (characters of 34 scripts and symbol
sets rendered from matplotlib's DejaVu fonts, generated once and cached)."""

import metareg
from metareg import Glyphs, GlyphsConfig

glyphs = metareg.benchmark(
    "glyphs", summary="Omniglot-like 28x28 characters of 34 scripts from bundled fonts; no download (cached on first use)",
    config=GlyphsConfig, provides={"episodic", "classification"}, metric="accuracy",
    algorithm_defaults={"inner_lr": 0.4},
    paper="in the spirit of Lake, Salakhutdinov, Tenenbaum. Human-level concept learning ... Science 2015",
)(type("GlyphsBenchmark", (Glyphs,), {"__module__": __name__}))


@metareg.hookimpl
def register_benchmarks(register):
    register(glyphs)
