"""`imgcls taxonomy show` / `api.taxonomy`: the class tree of a config, and errors for configs without one."""

from __future__ import annotations

import pytest

from imgcls import api
from imgcls.errors import UserError
from tiny_runs import requires_fashion_mnist


@requires_fashion_mnist
def test_taxonomy_from_config_file_map(tmp_path):
    config = tmp_path / "hier.yaml"
    config.write_text("data: {name: fashion_mnist, taxonomy: configs/taxonomies/fashion_mnist.yaml}\n")
    tree = api.taxonomy(config)
    assert tree.num_classes == 10 and tree.num_nodes == 15 and tree.max_depth == 4
    assert tree.path_names(tree.class_nodes[tree.class_names.index("Sneaker")]) == [
        "root",
        "footwear",
        "shoe",
        "Sneaker",
    ]
    assert "Ankle boot" in tree.render()


def test_taxonomy_show_without_taxonomy_is_a_user_error(tmp_path):
    config = tmp_path / "flat.yaml"
    config.write_text("data: {name: fashion_mnist}\n")
    with pytest.raises(UserError, match=r"no data\.taxonomy"):
        api.taxonomy(config)
