"""Class taxonomies: a tree over class names from WordNet, a parent map or label paths (SPEC §3.1)."""

from imgcls.taxonomy.builders import (
    RULES,
    read_label_paths,
    read_parent_map,
    taxonomy_from_parent_map,
    taxonomy_from_paths,
)
from imgcls.taxonomy.factory import build_taxonomy
from imgcls.taxonomy.tree import SELF_SUFFIX, Taxonomy
from imgcls.taxonomy.wordnet import (
    FASHION_MNIST_SYNSETS,
    load_wordnet,
    taxonomy_from_wnids,
    taxonomy_from_wordnet,
)

__all__ = [
    "FASHION_MNIST_SYNSETS",
    "RULES",
    "SELF_SUFFIX",
    "Taxonomy",
    "build_taxonomy",
    "load_wordnet",
    "read_label_paths",
    "read_parent_map",
    "taxonomy_from_parent_map",
    "taxonomy_from_paths",
    "taxonomy_from_wnids",
    "taxonomy_from_wordnet",
]
