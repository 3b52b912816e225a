"""Build a :class:`Taxonomy` from WordNet, a parent map (YAML/JSON) or label paths (CSV).

Seed 002 (SPEC §3.1): the union of all root → class paths is a DAG; it becomes a **tree by
keeping one parent per node** and is then simplified by **removing "dead" nodes** (internal
nodes with out-degree 1, whose child is spliced onto the grand-parent), repeatedly.

Our choices ([INFERRED]; documented in ``docs/hierarchical.md``):

* One-parent rule (the seed does not say which parent it keeps), deterministic and
  configurable: ``first_path`` keeps the parent on the first path that reaches the node (for
  WordNet: classes in class order, each class's ``hypernym_paths()`` in WordNet's order; for
  a parent map: the first listed parent); ``shortest_path`` keeps the parent closest to the
  root (ties → the earlier one), i.e. a breadth-first tree of the DAG.
* Several top-level nodes get a synthetic root named ``root``; a root with a single child is
  dropped (the child becomes the root), since a node that is always on carries no label.
* Nodes that no longer lead to any class after the parent choice are removed.
* A class that sits at an internal node (e.g. *Shirt* above *T-shirt*) gets a leaf
  ``"<node>#self"`` under that node, so classes are exactly the leaves: the internal node keeps
  its meaning ("any shirt"), the leaf means "a shirt that is none of the listed kinds".
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import rustworkx as rx
import yaml

from imgcls.config import ConfigLoader
from imgcls.errors import ConfigError, DataError
from imgcls.taxonomy.tree import SELF_SUFFIX, Taxonomy

RULES = ("first_path", "shortest_path")


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ConfigError(f"taxonomy rule '{rule}' is not known; use one of {', '.join(RULES)}")
    return rule


# ----------------------------------------------------------------------------------------------
# The core: ordered DAG → pruned tree
# ----------------------------------------------------------------------------------------------


class _Dag:
    """An ordered DAG being assembled: node names in first-seen order, ordered parent lists."""

    def __init__(self) -> None:
        self.order: dict[str, int] = {}
        self.parents: dict[str, list[str]] = {}

    def add(self, name: str) -> None:
        if name not in self.order:
            self.order[name] = len(self.order)
            self.parents[name] = []

    def link(self, parent: str, child: str) -> None:
        self.add(parent)
        self.add(child)
        if parent == child:
            raise DataError(f"taxonomy node '{child}' is listed as its own parent")
        if parent not in self.parents[child]:
            self.parents[child].append(parent)


def _tree_from_dag(
    dag: _Dag, class_names: Sequence[str], class_node_names: Sequence[str], rule: str, meta: dict[str, str]
) -> Taxonomy:
    check_rule(rule)
    class_names = [str(c) for c in class_names]
    if len(class_names) < 2:
        raise DataError("a taxonomy needs at least two classes")
    if len(set(class_names)) != len(class_names):
        raise DataError("class names must be unique to build a taxonomy")
    seen: dict[str, str] = {}
    for cname, node in zip(class_names, class_node_names, strict=True):
        if node in seen:
            raise DataError(f"classes '{seen[node]}' and '{cname}' map to the same taxonomy node '{node}'")
        seen[node] = cname
        dag.add(node)

    # --- the DAG in rustworkx: cycle check and the nodes that lead to a class
    graph = rx.PyDiGraph()
    gid = {name: graph.add_node(name) for name in dag.order}
    graph.add_edges_from_no_data([(gid[p], gid[c]) for c, ps in dag.parents.items() for p in ps])
    if not rx.is_directed_acyclic_graph(graph):
        cycle = rx.digraph_find_cycle(graph)
        names = " → ".join(graph[a] for a, _ in cycle) + f" → {graph[cycle[0][0]]}" if cycle else "?"
        raise DataError(f"the taxonomy contains a cycle: {names}; every node needs ancestors above it only")
    relevant: set[str] = set()
    for node in class_node_names:
        relevant.add(node)
        relevant.update(graph[i] for i in rx.ancestors(graph, gid[node]))
    order = sorted(relevant, key=dag.order.__getitem__)
    tops = [n for n in order if not dag.parents[n]]
    if len(tops) == 1:
        root = tops[0]
    else:
        root = "root" if "root" not in dag.order else "<root>"
        if root in dag.order:
            raise DataError("cannot add a synthetic root: node names 'root' and '<root>' are both taken")

    # --- one parent per node
    parent: dict[str, str] = {n: root for n in tops if n != root}
    if rule == "first_path":
        for n in order:
            if dag.parents[n]:
                parent[n] = dag.parents[n][0]
    else:  # shortest_path: breadth-first tree of the DAG (topological order gives final depths)
        depth = {root: 0, **{n: 1 for n in tops if n != root}}
        topo = [graph[i] for i in rx.topological_sort(graph) if graph[i] in relevant]
        for n in topo:
            ps = dag.parents[n]
            if ps:
                best = min(ps, key=lambda p: (depth[p], ps.index(p)))
                parent[n], depth[n] = best, depth[best] + 1

    children: dict[str, list[str]] = {n: [] for n in [root, *order]}
    for n in order:
        if n != root:
            children[parent[n]].append(n)

    # --- drop nodes that no longer lead to a class (their classes chose another parent)
    class_set = set(class_node_names)

    # (iteratively, children before parents: a taxonomy thousands of levels deep must not overflow the stack)
    post_order: list[str] = []
    stack: list[tuple[str, bool]] = [(root, False)]
    while stack:
        n, expanded = stack.pop()
        if expanded:
            post_order.append(n)
        else:
            stack.append((n, True))
            stack.extend((k, False) for k in children[n])
    leads_to_class: dict[str, bool] = {}
    for n in post_order:
        children[n] = [k for k in children[n] if leads_to_class[k]]
        leads_to_class[n] = bool(children[n]) or n in class_set

    # --- a class at an internal node gets its own "#self" leaf
    node_of_class = list(class_node_names)
    for c, n in enumerate(class_node_names):
        if children[n]:
            leaf = f"{n}{SELF_SUFFIX}"
            if leaf in children or leaf in dag.order:
                raise DataError(f"node name '{leaf}' is reserved for the leaf of class '{class_names[c]}'")
            children[n].insert(0, leaf)
            children[leaf] = []
            node_of_class[c] = leaf

    # --- remove dead nodes (out-degree 1), repeatedly; a single-child root hands over to its child
    while len(children[root]) == 1:
        root = children[root][0]
    pending = [root]  # parents before children, iteratively (see above)
    while pending:
        n = pending.pop()
        spliced = []
        for k in children[n]:
            while len(children[k]) == 1:
                k = children[k][0]
            spliced.append(k)
        children[n] = spliced
        pending.extend(spliced)

    # --- breadth-first node order and parent indices
    names: list[str] = []
    parent_names: list[str] = []
    frontier = [root]
    while frontier:
        nxt = []
        for n in frontier:
            for k in children[n]:
                names.append(k)
                parent_names.append(n)
                nxt.append(k)
        frontier = nxt
    index = {n: i for i, n in enumerate(names)}
    parents = [-1 if p == root else index[p] for p in parent_names]
    missing = [class_names[c] for c, n in enumerate(node_of_class) if n not in index]
    if missing:
        raise DataError(f"classes lost while building the taxonomy: {', '.join(missing[:5])}")
    return Taxonomy(
        root=root,
        nodes=names,
        parents=parents,
        class_names=class_names,
        class_nodes=[index[n] for n in node_of_class],
        meta={**meta, "rule": rule},
    )


# ----------------------------------------------------------------------------------------------
# Public builders
# ----------------------------------------------------------------------------------------------


def taxonomy_from_paths(
    class_paths: Sequence[Sequence[Sequence[str]]],
    class_names: Sequence[str],
    rule: str = "first_path",
    source: str = "paths",
) -> Taxonomy:
    """Taxonomy from root → class paths: ``class_paths[c]`` lists one or more paths (node names,
    top-down) that all end at class ``c``'s node. Several paths per class make a DAG, which
    the one-parent ``rule`` turns into a tree."""
    if len(class_paths) != len(class_names):
        raise DataError(f"got paths for {len(class_paths)} classes but {len(class_names)} class names")
    dag = _Dag()
    class_nodes = []
    for cname, paths in zip(class_names, class_paths, strict=True):
        paths = [[str(x) for x in p] for p in paths]
        if not paths or any(not p for p in paths):
            raise DataError(f"class '{cname}' has no path in the taxonomy")
        ends = {p[-1] for p in paths}
        if len(ends) != 1:
            raise DataError(f"the paths of class '{cname}' end at different nodes: {', '.join(sorted(ends))}")
        for p in paths:
            dag.add(p[0])
            for a, b in itertools.pairwise(p):
                dag.link(a, b)
        class_nodes.append(paths[0][-1])
    return _tree_from_dag(dag, class_names, class_nodes, rule, {"source": source})


def taxonomy_from_parent_map(
    parent_map: Mapping[str, Any],
    class_names: Sequence[str],
    rule: str = "first_path",
    source: str = "parent_map",
) -> Taxonomy:
    """Taxonomy from ``{child: parent}``; a value may be a list of parents (a DAG; ``first_path``
    keeps the first one) or null/empty for a top-level node. Class names must be node names."""
    if not isinstance(parent_map, Mapping) or not parent_map:
        raise DataError("a taxonomy parent map must be a non-empty mapping {child: parent}")
    dag = _Dag()
    for child, value in parent_map.items():
        child = str(child)
        dag.add(child)
        ps = [] if value in (None, "") else value if isinstance(value, list) else [value]
        for p in ps:
            if isinstance(p, (dict, list)):
                raise DataError(f"parent of '{child}' must be a name or a list of names, got {p!r}")
            dag.link(str(p), child)
    missing = [c for c in class_names if str(c) not in dag.order]
    if missing:
        raise DataError(
            f"classes missing from the taxonomy parent map: {', '.join(map(str, missing[:5]))}"
            + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        )
    return _tree_from_dag(dag, class_names, [str(c) for c in class_names], rule, {"source": source})


def _unique_json_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"duplicate key '{key}'; list several parents as \"{key}\": [a, b]")
        seen[key] = value
    return seen


def read_parent_map(path: str | Path) -> dict[str, Any]:
    """Load a YAML or JSON parent map ``{child: parent | [parents] | null}``."""
    p = Path(path)
    try:
        text = p.read_text()
        # the config loader: its limits (nesting, alias bombs), unique keys, and YAML 1.2 scalars (a class
        # named `no` or `yes` stays a name, not a boolean)
        data = (
            json.loads(text, object_pairs_hook=_unique_json_keys)
            if p.suffix.lower() == ".json"
            else yaml.load(text, Loader=ConfigLoader)
        )
    except (OSError, ValueError, yaml.YAMLError, ConfigError) as exc:  # ConfigError: too deep, alias bomb
        raise DataError(f"cannot read taxonomy parent map '{p}': {exc}".splitlines()[0]) from None
    except RecursionError:  # JSON nested past Python's recursion limit
        raise DataError(
            f"cannot read taxonomy parent map '{p}': it is nested too deeply (hundreds of levels); "
            "a parent map is flat: child: parent or child: [parents]"
        ) from None
    if not isinstance(data, dict):
        raise DataError(f"taxonomy parent map '{p}' must hold a mapping child: parent")
    return data


def read_label_paths(path: str | Path, class_names: Sequence[str]) -> list[list[list[str]]]:
    """Read a CSV of label paths: one row per path, top-down, one node per column; the last
    non-empty cell is the class. A first row that does not end with a class name is a header.
    Several rows for one class give it several paths. Returns paths per class."""
    p = Path(path)
    try:
        with p.open(newline="") as fh:
            rows = [[cell.strip() for cell in row] for row in csv.reader(fh)]
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read taxonomy CSV '{p}': {exc}") from None
    names = {str(c): i for i, c in enumerate(class_names)}
    per_class: list[list[list[str]]] = [[] for _ in class_names]
    first = True
    for lineno, row in enumerate(rows, start=1):
        while row and not row[-1]:
            row.pop()
        if not row or row[0].startswith("#"):
            continue
        if "" in row:
            raise DataError(f"taxonomy CSV '{p}' line {lineno}: empty cell inside the path")
        if row[-1] not in names:
            if first:
                first = False
                continue
            raise DataError(
                f"taxonomy CSV '{p}' line {lineno}: ends with '{row[-1]}', which is not a class name"
            )
        first = False
        per_class[names[row[-1]]].append(row)
    missing = [str(c) for c, paths in zip(class_names, per_class, strict=True) if not paths]
    if missing:
        raise DataError(f"taxonomy CSV '{p}' has no row for classes: {', '.join(missing[:5])}")
    return per_class
