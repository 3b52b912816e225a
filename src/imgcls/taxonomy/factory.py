"""Build the taxonomy a config's ``data.taxonomy`` names (SPEC §3.1): ``wordnet`` or a file.

The one dispatcher over the builders (parent map, label paths) and WordNet; it sits above both
so that neither imports the other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from imgcls.errors import ConfigError, DataError
from imgcls.recipes import resolve_taxonomy
from imgcls.taxonomy.builders import (
    check_rule,
    read_label_paths,
    read_parent_map,
    taxonomy_from_parent_map,
    taxonomy_from_paths,
)
from imgcls.taxonomy.tree import Taxonomy
from imgcls.taxonomy.wordnet import taxonomy_from_wordnet


def build_taxonomy(
    spec: str, class_names: Sequence[str], rule: str = "first_path", synsets: Mapping[str, str] | None = None
) -> Taxonomy:
    """Build the taxonomy named by a config's ``data.taxonomy``.

    ``spec``: ``"wordnet"`` (class names are WordNet ids such as ``n01443537``, or the data set
    has a built-in synset map, or ``synsets`` maps class name → synset name), or a path to a
    ``.yaml``/``.yml``/``.json`` parent map or a ``.csv`` of label paths.
    """
    check_rule(rule)
    if spec == "wordnet":
        return taxonomy_from_wordnet(class_names, rule=rule, synsets=synsets)
    p = Path(spec).expanduser()
    suffix = p.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json", ".csv"):
        raise ConfigError(
            f"data.taxonomy '{spec}' must be 'wordnet' or a .yaml/.yml/.json parent map or a .csv of label paths"
        )
    if not p.is_file():
        p = (
            resolve_taxonomy(spec) or p
        )  # a shipped taxonomy (configs/taxonomies/...) when installed from a wheel
    if not p.is_file():
        raise DataError(f"taxonomy file '{p}' not found; set data.taxonomy to an existing file or 'wordnet'")
    if suffix == ".csv":
        return taxonomy_from_paths(
            read_label_paths(p, class_names), class_names, rule, source=f"csv:{p.name}"
        )
    return taxonomy_from_parent_map(read_parent_map(p), class_names, rule, source=f"parent_map:{p.name}")
