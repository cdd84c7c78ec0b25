import pytest

#: a glyphs config small enough to generate in a second or two
SMALL_GLYPHS = {"max_per_group": 3, "instances": 6, "query": 2, "meta_batch": 2}


@pytest.fixture(scope="session")
def glyph_cache(tmp_path_factory):
    """One cache folder for the whole session, so the small glyph set is generated once."""
    return str(tmp_path_factory.mktemp("glyph-cache"))


@pytest.fixture
def small_glyphs(glyph_cache):
    return {**SMALL_GLYPHS, "cache_dir": glyph_cache}
