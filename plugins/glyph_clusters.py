"""``glyph_clusters``: glyphs episodes from K clusters of training scripts, each cluster seen through
its own fixed pixel permutation (cluster 0: none), so that tasks of different clusters share no
input structure: the conflicting meta-training distribution of the "multi-task methods inside
meta-learning" study (issue 10, item 4; benchmarks/meta_conflict.py).  A training episode's
``task_ids`` entry is its cluster (``num_train_tasks`` = K), which task-aware combiners (GradVac,
GradNorm) and the task discriminator read; held-out episodes come from glyphs' evaluation groups,
each through one of the same K permutations.  Default backbone: MLP 784-128-128."""

import metareg
from metareg import GlyphClusters, GlyphClustersConfig

glyph_clusters = metareg.benchmark(
    "glyph_clusters",
    summary="glyphs episodes from K clusters of scripts, each seen through its own pixel permutation "
            "(conflicting meta-training tasks; task id = cluster)",
    config=GlyphClustersConfig, provides={"episodic", "classification"}, metric="accuracy",
    algorithm_defaults={"inner_lr": 0.4},
    paper="glyphs as permuted clusters, in the spirit of permuted MNIST (Goodfellow et al. 2013; "
          "Kirkpatrick et al. 2017)",
)(type("GlyphClustersBenchmark", (GlyphClusters,), {"__module__": __name__}))


@metareg.hookimpl
def register_benchmarks(register):
    register(glyph_clusters)
