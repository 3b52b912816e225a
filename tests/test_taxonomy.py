"""Taxonomy: DAG → tree rules, dead-node pruning, internal-node classes, label matrices,
distances / LCA, serialisation, file builders and the offline WordNet reader (SPEC §3.1)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from imgcls.errors import ConfigError, DataError
from imgcls.taxonomy import (
    FASHION_MNIST_SYNSETS,
    Taxonomy,
    build_taxonomy,
    taxonomy_from_parent_map,
    taxonomy_from_paths,
    taxonomy_from_wnids,
    taxonomy_from_wordnet,
)
from imgcls.taxonomy import wordnet as wnmod

# A DAG with diamond inheritance: X has parents A (depth 2) and B (depth 1).
DIAMOND = {
    "P": "root",
    "A": "P",
    "B": "root",
    "X": ["A", "B"],
    "x1": "X",
    "x2": "X",
    "y": "B",
    "z": "A",
    "w": "P",
}
DIAMOND_CLASSES = ["x1", "x2", "y", "z", "w"]

# A tree with a class at an internal node (mammal), a dead chain (fish → shark) and a dangling
# non-class subtree (sparrow, eagle under bird).
ANIMALS = {
    "animal": None,
    "mammal": "animal",
    "cat": "mammal",
    "dog": "mammal",
    "bird": "animal",
    "sparrow": "bird",
    "eagle": "bird",
    "fish": "animal",
    "shark": "fish",
}
ANIMAL_CLASSES = ["mammal", "cat", "dog", "bird", "shark"]


def parent_names(t: Taxonomy) -> dict[str, str]:
    return {t.nodes[i]: t.name(t.parent(i)) for i in range(t.num_nodes)}


@pytest.fixture
def animals() -> Taxonomy:
    return taxonomy_from_parent_map(ANIMALS, ANIMAL_CLASSES)


# --------------------------------------------------------------------------------------------- DAG → tree


def test_diamond_first_path_keeps_first_listed_parent_and_prunes_dead_nodes():
    t = taxonomy_from_parent_map(DIAMOND, DIAMOND_CLASSES, rule="first_path")
    # tree root → {P → {A → {X → {x1, x2}, z}, w}, B → {y}}; B has one child → y moves to root
    assert t.root == "root"
    assert parent_names(t) == {
        "P": "root",
        "y": "root",
        "A": "P",
        "w": "P",
        "X": "A",
        "z": "A",
        "x1": "X",
        "x2": "X",
    }
    assert t.nodes == ["P", "y", "A", "w", "X", "z", "x1", "x2"]  # breadth-first, first-seen sibling order
    assert t.depths == [1, 1, 2, 2, 3, 3, 4, 4]


def test_diamond_shortest_path_keeps_parent_closest_to_root():
    t = taxonomy_from_parent_map(DIAMOND, DIAMOND_CLASSES, rule="shortest_path")
    # X chooses B (depth 1) over A (depth 2); A is then left with z only → spliced out
    assert parent_names(t) == {
        "P": "root",
        "B": "root",
        "z": "P",
        "w": "P",
        "X": "B",
        "y": "B",
        "x1": "X",
        "x2": "X",
    }
    assert "A" not in t.nodes


def test_paths_rule_first_path_uses_first_path_reaching_node():
    paths = [[["r", "a", "m", "c1"], ["r", "b", "m", "c1"]], [["r", "b", "c2"]], [["r", "a", "c3"]]]
    first = taxonomy_from_paths(paths, ["C1", "C2", "C3"], rule="first_path")
    assert first.name(first.parent(first.class_nodes[0])) == "a"  # m spliced: c1 hangs under a
    shortest = taxonomy_from_paths(paths, ["C1", "C2", "C3"], rule="shortest_path")
    # tie (a and b both depth 1) → the earlier parent a; same tree
    assert parent_names(shortest) == parent_names(first)


def test_internal_class_gets_self_leaf_and_dead_and_dangling_nodes_go(animals):
    t = animals
    assert t.root == "animal"
    assert parent_names(t) == {
        "mammal": "animal",
        "bird": "animal",
        "shark": "animal",  # fish had one child → spliced
        "mammal#self": "mammal",
        "cat": "mammal",
        "dog": "mammal",
    }
    assert t.name(t.class_nodes[0]) == "mammal#self"  # class "mammal" is the self leaf
    assert all(t.is_leaf(n) for n in t.class_nodes)
    assert "sparrow" not in t.nodes and "eagle" not in t.nodes  # no class below them


def test_single_child_root_is_dropped_and_several_tops_get_synthetic_root():
    t = taxonomy_from_parent_map({"entity": None, "thing": "entity", "a": "thing", "b": "thing"}, ["a", "b"])
    assert t.root == "thing" and t.nodes == ["a", "b"]
    t2 = taxonomy_from_parent_map({"a": None, "b": None, "c": "b", "d": "b"}, ["a", "c", "d"])
    assert t2.root == "root" and parent_names(t2) == {"a": "root", "b": "root", "c": "b", "d": "b"}


def test_builder_errors():
    with pytest.raises(DataError, match="cycle"):
        taxonomy_from_parent_map({"a": "b", "b": "c", "c": "a", "d": "a"}, ["a", "d"])
    with pytest.raises(DataError, match="missing"):
        taxonomy_from_parent_map({"a": None, "b": "a"}, ["b", "zzz"])
    with pytest.raises(DataError, match="same taxonomy node"):
        taxonomy_from_paths([[["r", "x"]], [["r", "x"]]], ["A", "B"])
    with pytest.raises(ConfigError, match="rule"):
        taxonomy_from_parent_map(DIAMOND, DIAMOND_CLASSES, rule="random")
    with pytest.raises(DataError, match="at least two"):
        taxonomy_from_parent_map({"a": None}, ["a"])


def test_constructor_validates_tree():
    with pytest.raises(DataError, match="leaves without a class"):
        Taxonomy("r", ["a", "b", "c"], [-1, -1, -1], ["A", "B"], [0, 1])
    with pytest.raises(DataError, match="must be leaves"):
        Taxonomy("r", ["a", "b", "c"], [-1, -1, 0], ["A", "B", "C"], [0, 1, 2])
    with pytest.raises(DataError, match="cycle"):
        Taxonomy("r", ["a", "b", "c"], [1, 0, -1], ["C", "A"], [2, 0])


# --------------------------------------------------------------------------------------------- matrices


def test_lineage_matrix_rows_and_node_targets(animals):
    t = animals
    lin = t.lineage_matrix()
    assert lin.shape == (5, t.num_nodes)
    expected = {
        "mammal": {"mammal", "mammal#self"},
        "cat": {"mammal", "cat"},
        "dog": {"mammal", "dog"},
        "bird": {"bird"},
        "shark": {"shark"},
    }
    for c, name in enumerate(t.class_names):
        assert {t.nodes[j] for j in torch.nonzero(lin[c]).flatten().tolist()} == expected[name]
    soft = torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.0]])  # half cat, half dog
    marg = t.node_targets(soft)[0]
    assert marg[t.index("mammal")] == 1.0 and marg[t.index("cat")] == 0.5 and marg[t.index("bird")] == 0.0
    assert torch.equal(t.node_targets(torch.tensor([1, 3])), lin[[1, 3]])


def test_levels_padded_paths_and_level_label_sets(animals):
    t = animals
    assert t.max_depth == 2
    paths = t.padded_class_paths()
    bird = t.index("bird")
    assert paths[3].tolist() == [bird, bird]  # depth-1 leaf repeated at level 2
    assert paths[1].tolist() == [t.index("mammal"), t.index("cat")]
    levels = t.level_nodes()
    assert [[t.nodes[i] for i in lv] for lv in levels] == [
        ["mammal", "bird", "shark"],
        ["bird", "shark", "mammal#self", "cat", "dog"],
    ]
    targets = t.class_level_targets()
    for c in range(t.num_classes):
        for lv in range(2):
            assert levels[lv][targets[c, lv]] == paths[c, lv]


def test_level_weights_inverse_level_size():
    t = taxonomy_from_parent_map(
        {"A": None, "B": None, "a1": "A", "a2": "A", "a3": "A"}, ["B", "a1", "a2", "a3"]
    )
    w = t.level_weights()
    # levels: A, B (2 nodes) → 1/2; a1..a3 (3 nodes) → 1/3; normalised to mean 1
    raw = torch.tensor([1 / 2, 1 / 2, 1 / 3, 1 / 3, 1 / 3])
    assert torch.allclose(w, raw / raw.mean())
    assert torch.equal(t.level_weights("none"), torch.ones(5))


def test_distances_and_lca(animals):
    t = animals
    cat, dog, shark, mammal = (t.index(n) for n in ("cat", "dog", "shark", "mammal"))
    assert t.distance(cat, dog) == 2
    assert t.distance(cat, shark) == 3
    assert t.distance(cat, -1) == 2 and t.distance(-1, -1) == 0
    assert t.lca(cat, dog) == mammal
    assert t.lca(cat, shark) == -1
    assert t.lca(cat, mammal) == mammal
    assert t.path_names(cat) == ["animal", "mammal", "cat"] and t.path_names(-1) == ["animal"]
    assert t.path_names(cat, include_root=False) == ["mammal", "cat"]
    d = t.distance_matrix()
    assert d.shape == (t.num_nodes + 1,) * 2 and d[-1, shark] == 1
    cd = t.class_distance_matrix()
    assert cd[1, 2] == 2 and cd[1, 4] == 3 and cd[0, 1] == 2  # mammal#self ↔ cat
    h = t.class_lca_height_matrix()
    assert h[1, 2] == 1 and h[1, 4] == 2 and h[4, 1] == 1 and np.all(np.diag(h) == 0)
    assert t.edges() == [(mammal, t.index("mammal#self")), (mammal, cat), (mammal, dog)]
    assert t.edge_index().shape == (3, 2)


def test_class_to_node_probs_sums_leaves_up_the_tree(animals):
    t = animals
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25]])
    nodes = t.class_to_node_probs(probs)[0]
    assert nodes[t.index("mammal")].item() == pytest.approx(0.6)
    assert nodes[t.index("cat")].item() == pytest.approx(0.2)
    assert nodes[t.index("shark")].item() == pytest.approx(0.25)
    as_np = t.class_to_node_probs(probs.numpy())
    assert isinstance(as_np, np.ndarray) and np.allclose(as_np[0], nodes.numpy())


def test_dict_round_trip_through_weights_only_torch_load(animals):
    buf = io.BytesIO()
    torch.save({"taxonomy": animals.to_dict()}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    back = Taxonomy.from_dict(loaded["taxonomy"])
    assert back == animals and back.meta == animals.meta
    assert json.loads(json.dumps(animals.to_dict())) == animals.to_dict()
    with pytest.raises(DataError):
        Taxonomy.from_dict({"nodes": []})


def test_render_shows_tree_and_classes(animals):
    text = str(animals)
    assert text.splitlines()[0] == "animal"
    assert "├── mammal" in text and "│   ├── mammal#self  [mammal]" in text and "└── shark  [shark]" in text
    assert "5 classes, 6 nodes below the root, depth 2" in text


# --------------------------------------------------------------------------------------------- files


def test_build_from_yaml_json_and_csv(tmp_path):
    import yaml

    (tmp_path / "tax.yaml").write_text(yaml.safe_dump(ANIMALS, sort_keys=False))
    (tmp_path / "tax.json").write_text(json.dumps(ANIMALS))
    a = build_taxonomy(str(tmp_path / "tax.yaml"), ANIMAL_CLASSES)
    b = build_taxonomy(str(tmp_path / "tax.json"), ANIMAL_CLASSES)
    assert a == b == taxonomy_from_parent_map(ANIMALS, ANIMAL_CLASSES)
    csv_text = (
        "level1,level2,level3\n"
        "animal,mammal\n"
        "animal,mammal,cat\n"
        "animal,mammal,dog\n"
        "animal,bird\n"
        "animal,fish,shark\n"
        "animal,sea_life,shark\n"  # a second path for shark (DAG; first_path keeps fish)
    )
    (tmp_path / "tax.csv").write_text(csv_text)
    c = build_taxonomy(str(tmp_path / "tax.csv"), ANIMAL_CLASSES)
    assert parent_names(c) == parent_names(a)
    assert c.meta["source"] == "csv:tax.csv"


def test_build_taxonomy_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        build_taxonomy(str(tmp_path / "missing.yaml"), ["a", "b"])
    with pytest.raises(ConfigError, match="wordnet"):
        build_taxonomy(str(tmp_path / "tax.txt"), ["a", "b"])
    (tmp_path / "bad.csv").write_text("a,b\na,c\nx,zzz\n")
    with pytest.raises(DataError, match="line 3"):
        build_taxonomy(str(tmp_path / "bad.csv"), ["b", "c"])
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(DataError, match="mapping"):
        build_taxonomy(str(tmp_path / "list.yaml"), ["a", "b"])


# --------------------------------------------------------------------------------------------- WordNet


@pytest.fixture(scope="module")
def wn():
    try:
        return wnmod.load_wordnet()
    except DataError as exc:  # machines without WordNet
        pytest.skip(str(exc))


def test_fashion_mnist_synsets_have_expected_hypernym_paths(wn):
    assert list(FASHION_MNIST_SYNSETS) == [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]
    expected_ancestor = {
        "T-shirt/top": "shirt.n.01",
        "Trouser": "garment.n.01",
        "Pullover": "sweater.n.01",
        "Dress": "clothing.n.01",
        "Coat": "garment.n.01",
        "Sandal": "footwear.n.02",
        "Shirt": "garment.n.01",
        "Sneaker": "shoe.n.01",
        "Bag": "container.n.01",
        "Ankle boot": "footwear.n.02",
    }
    for cls, name in FASHION_MNIST_SYNSETS.items():
        paths = wnmod.hypernym_paths(wn.synset(name))
        assert all(p[0] == "entity.n.01" and p[-1] == name for p in paths)
        assert any(expected_ancestor[cls] in p for p in paths), cls
    assert "T-shirt" in wn.synset("jersey.n.03").lemma_names()
    assert "sneaker" in wn.synset("gym_shoe.n.01").lemma_names()
    # hypernyms visited in name order (deterministic): clothing via consumer_goods first
    assert wnmod.hypernym_paths(wn.synset("clothing.n.01"))[0][5] == "commodity.n.01"


def test_fashion_mnist_tree_garments_footwear_bags(wn):
    t = build_taxonomy("wordnet", list(FASHION_MNIST_SYNSETS), "first_path")
    assert t.root == "artifact.n.01"
    assert [t.nodes[i] for i in t.children(-1)] == ["clothing.n.01", "footwear.n.02", "bag.n.04"]
    c = {name: i for i, name in enumerate(t.class_names)}
    node = lambda cls: t.class_nodes[c[cls]]  # noqa: E731
    assert t.nodes[node("Shirt")] == "shirt.n.01#self"  # Shirt is an internal-node class
    assert t.name(t.lca(node("T-shirt/top"), node("Shirt"))) == "shirt.n.01"
    assert t.name(t.lca(node("Sandal"), node("Sneaker"))) == "shoe.n.01"
    assert t.name(t.lca(node("Sandal"), node("Ankle boot"))) == "footwear.n.02"
    assert t.lca(node("Trouser"), node("Sandal")) == -1
    s = build_taxonomy("wordnet", list(FASHION_MNIST_SYNSETS), "shortest_path")
    assert [s.nodes[i] for i in s.children(-1)] == ["covering.n.02", "bag.n.04"]


class FakeSynset:
    """Synset stand-in whose hypernyms come back in a chosen order (nltk's order follows set hashing)."""

    def __init__(self, name, parents=(), reverse=False):
        self._name, self._parents, self._reverse = name, list(parents), reverse

    def name(self):
        return self._name

    def hypernyms(self):
        return self._parents[::-1] if self._reverse else list(self._parents)

    def instance_hypernyms(self):
        return []


def test_hypernym_paths_do_not_depend_on_nltk_pointer_order():
    def build(reverse):
        top = FakeSynset("entity", reverse=reverse)
        a, b = FakeSynset("b_thing", [top], reverse), FakeSynset("a_thing", [top], reverse)
        return FakeSynset("leaf", [a, b], reverse)

    assert wnmod.hypernym_paths(build(False)) == wnmod.hypernym_paths(build(True))
    assert wnmod.hypernym_paths(build(True))[0] == ["entity", "a_thing", "leaf"]  # name order


def test_tiny_imagenet_wnids(wn):
    wnids = ["n01443537", "n02124075", "n02125311", "n01641577", "n01644900"]
    t = taxonomy_from_wnids(wnids)
    assert [t.nodes[n] for n in t.class_nodes] == [
        "goldfish.n.01",
        "egyptian_cat.n.01",
        "cougar.n.01",
        "bullfrog.n.01",
        "tailed_frog.n.01",
    ]
    assert t.name(t.lca(t.class_nodes[1], t.class_nodes[2])) == "cat.n.01"
    assert t.name(t.lca(t.class_nodes[3], t.class_nodes[4])) == "frog.n.01"
    with pytest.raises(DataError, match="not a WordNet noun id"):
        taxonomy_from_wnids(["n0144", "n02124075"])
    with pytest.raises(DataError, match=r"not a WordNet 3\.0 noun synset"):
        taxonomy_from_wnids(["n99999999", "n02124075"], wn=wn)
    with pytest.raises(DataError, match="synset map"):
        taxonomy_from_wordnet(["cat", "dog"], wn=wn)
    with pytest.raises(DataError, match="not a WordNet synset"):
        taxonomy_from_wordnet(["a", "b"], synsets={"a": "shirt.n.01", "b": "nonsense.n.99"}, wn=wn)


def test_nltk_data_copy_is_built_once_with_lexnames(tmp_path):
    if not wnmod.DEBIAN_WORDNET_DIR.is_dir():
        pytest.skip("Debian WordNet files not installed")
    root = wnmod.prepare_nltk_wordnet(cache=tmp_path)
    corpus = root / "corpora" / "wordnet"
    lex = (corpus / "lexnames").read_text().splitlines()
    assert len(lex) == 45 and lex[3] == "03\tnoun.Tops\t1" and lex[44] == "44\tadj.ppl\t3"
    assert all((corpus / f).is_file() for f in wnmod.WORDNET_FILES)
    mtime = (corpus / "data.noun").stat().st_mtime_ns
    assert wnmod.prepare_nltk_wordnet(cache=tmp_path) == root
    assert (corpus / "data.noun").stat().st_mtime_ns == mtime  # reused, not copied again


def test_missing_wordnet_raises_data_error_naming_packages(tmp_path, monkeypatch):
    def absent():
        raise LookupError("no corpus")

    monkeypatch.setattr(wnmod, "_installed_nltk_wordnet", absent)
    with pytest.raises(DataError, match=r"wordnet-base.*wordnet-sense-index.*nltk\.downloader wordnet"):
        wnmod.load_wordnet(source=tmp_path / "nowhere", cache=tmp_path)
    (tmp_path / "partial").mkdir()
    for f in wnmod.WORDNET_FILES:
        if f != "index.sense":
            (tmp_path / "partial" / f).write_text("")
    with pytest.raises(DataError, match="wordnet-sense-index"):
        wnmod.prepare_nltk_wordnet(tmp_path / "partial", tmp_path)


def test_an_unwritable_cache_names_the_folder_and_the_setting(tmp_path):
    source = tmp_path / "wordnet"
    source.mkdir()
    for f in wnmod.WORDNET_FILES:
        (source / f).write_text("x")
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")  # unwritable even for root
    with pytest.raises(DataError) as info:
        wnmod.prepare_nltk_wordnet(source, blocker)
    message = str(info.value)
    assert (
        "\n" not in message
        and f"cannot write the WordNet copy NLTK reads to '{blocker / 'nltk_data' / 'corpora'}'" in message
    )
    assert message.endswith("set IMGCLS_CACHE to a writable folder")


def test_a_thousands_of_levels_deep_taxonomy_builds_without_recursion():
    depth = 3000
    chain = {"n0": None, **{f"n{i}": f"n{i - 1}" for i in range(1, depth)}}
    classes = ["a", "b", "c"]
    taxonomy = taxonomy_from_parent_map({**chain, **{c: f"n{depth - 1}" for c in classes}}, classes)
    assert taxonomy.class_names == classes  # the single-child chain is spliced away
    assert len(taxonomy.nodes) == 3


def test_parent_map_files_refuse_duplicate_keys_and_keep_yes_no_names(tmp_path):
    from imgcls.taxonomy.builders import read_parent_map

    yaml_file = tmp_path / "map.yaml"
    yaml_file.write_text("clothing: null\nfootwear: null\nDress: clothing\nyes: footwear\nDress: footwear\n")
    with pytest.raises(DataError, match=r"duplicate key 'Dress' at line 5 \(first at line 3\)"):
        read_parent_map(yaml_file)
    yaml_file.write_text("clothing: null\nyes: clothing\nno: clothing\n")
    assert read_parent_map(yaml_file) == {"clothing": None, "yes": "clothing", "no": "clothing"}
    json_file = tmp_path / "map.json"
    json_file.write_text('{"clothing": null, "Dress": "clothing", "Dress": "footwear"}')
    with pytest.raises(DataError, match=r"duplicate key 'Dress'"):
        read_parent_map(json_file)
