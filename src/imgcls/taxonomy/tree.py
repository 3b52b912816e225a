"""The class taxonomy: a rooted tree over class names (seed 002, SPEC §3.1).

A :class:`Taxonomy` is built once (see :mod:`imgcls.taxonomy.builders`) and is immutable. It
holds a tree whose **leaves are exactly the classes** (a class that sits at an internal node
gets a ``"<node>#self"`` leaf, see the builders) and answers every question the hierarchical
heads, losses and metrics ask: levels, lineage multi-hot targets, per-level label sets,
tree distances, lowest common ancestors, the (parent, child) edge list.

Index conventions (used everywhere in the package):

* **Node space** = all non-root nodes, indices ``0 .. N-1`` in breadth-first order (level by
  level; siblings in the order they were first seen in the source). The root is excluded
  from the label vector (it is always on), as in the seed.
* Index ``-1`` denotes the **root** wherever a method accepts or returns a node index.
  Arrays that include the root (``distance_matrix``, ``ancestor_table``, ``depths_with_root``)
  put it **last**, so ``-1`` indexes it there too.
* **Class space** = the data set's classes in their order; ``class_nodes[c]`` is the leaf of
  class ``c``.
* Levels (depths): the root has level 0, its children level 1, and so on.

The tree is also available as a :class:`rustworkx.PyDiGraph` (``graph``; payload = node name,
graph node ``i`` = node index ``i``, the root last) for users who want graph algorithms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import rustworkx as rx
import torch

from imgcls.errors import DataError

SELF_SUFFIX = "#self"
"""Suffix of the leaf added under an internal node that is itself a class."""

_FORMAT = "imgcls.taxonomy/1"


class Taxonomy:
    """A rooted tree over the classes of a data set.

    Args:
        root: name of the root node.
        nodes: names of the non-root nodes (node space order is taken as given).
        parents: ``parents[i]`` is the node index of node ``i``'s parent, ``-1`` for children
            of the root; the links must form a tree under the root (any node order).
        class_names: class names in class-index order.
        class_nodes: ``class_nodes[c]`` the (leaf) node index of class ``c``.
        meta: free-form provenance (``source``, ``rule``), only str values.

    Use the builders (``build_taxonomy``, ``taxonomy_from_parent_map`` ...) rather than this
    constructor; they turn DAGs into trees and prune dead nodes.
    """

    def __init__(
        self,
        root: str,
        nodes: Sequence[str],
        parents: Sequence[int],
        class_names: Sequence[str],
        class_nodes: Sequence[int],
        meta: dict[str, str] | None = None,
    ) -> None:
        self.root = str(root)
        self.nodes: list[str] = [str(n) for n in nodes]
        self.parents: list[int] = [int(p) for p in parents]
        self.class_names: list[str] = [str(c) for c in class_names]
        self.class_nodes: list[int] = [int(i) for i in class_nodes]
        self.meta: dict[str, str] = {str(k): str(v) for k, v in (meta or {}).items()}
        self._validate()
        self._index = {name: i for i, name in enumerate(self.nodes)}
        self._build_tables()

    # ------------------------------------------------------------------ construction
    def _validate(self) -> None:
        n = len(self.nodes)
        if n == 0:
            raise DataError("taxonomy has no nodes below the root; it needs at least two classes")
        if len(set(self.nodes)) != n or self.root in self.nodes:
            dup = sorted({x for x in self.nodes if self.nodes.count(x) > 1} | ({self.root} & set(self.nodes)))
            raise DataError(f"taxonomy node names must be unique; duplicated: {', '.join(dup[:5])}")
        if len(self.parents) != n:
            raise DataError(f"taxonomy has {n} nodes but {len(self.parents)} parent entries")
        if any(p < -1 or p >= n or p == i for i, p in enumerate(self.parents)):
            raise DataError("taxonomy parent indices must be -1 (root) or the index of another node")
        if len(self.class_nodes) != len(self.class_names):
            raise DataError("taxonomy needs one node per class name")
        if len(set(self.class_nodes)) != len(self.class_nodes):
            raise DataError("two classes map to the same taxonomy node; each class needs its own node")
        if any(not 0 <= c < n for c in self.class_nodes):
            raise DataError("taxonomy class nodes must be node indices")
        # every node must reach the root (no cycles)
        for i in range(n):
            seen, j = 0, i
            while j != -1:
                j = self.parents[j]
                seen += 1
                if seen > n:
                    raise DataError(f"taxonomy parent links contain a cycle through node '{self.nodes[i]}'")
        has_child = set(self.parents)
        leaves = {i for i in range(n) if i not in has_child}
        not_leaf = [self.class_names[c] for c, node in enumerate(self.class_nodes) if node not in leaves]
        if not_leaf:
            raise DataError(f"taxonomy classes must be leaves; internal: {', '.join(not_leaf[:5])}")
        orphan = sorted(leaves - set(self.class_nodes))
        if orphan:
            raise DataError(
                f"taxonomy leaves without a class: {', '.join(self.nodes[i] for i in orphan[:5])}"
            )

    def _build_tables(self) -> None:
        n = len(self.nodes)
        root = n  # position of the root in "with root" arrays
        parent_ext = np.array([p if p >= 0 else root for p in self.parents] + [-1], dtype=np.int64)
        depth = np.zeros(n + 1, dtype=np.int64)
        for i in range(n):
            d, j = 0, i
            while j != root:
                j = int(parent_ext[j])
                d += 1
            depth[i] = d
        self._parent_ext = parent_ext
        self._depth_ext = depth
        self.max_depth = int(depth.max())
        # children in node-index order
        self._children: list[list[int]] = [[] for _ in range(n + 1)]
        for i in range(n):
            self._children[int(parent_ext[i])].append(i)
        # ancestor table: anc[i, l] = ancestor of i at level l (the node itself for l >= depth[i])
        anc = np.empty((n + 1, self.max_depth + 1), dtype=np.int64)
        for i in range(n + 1):
            path = self._path_ext(i)  # root .. i
            for level in range(self.max_depth + 1):
                anc[i, level] = path[min(level, len(path) - 1)]
        self._anc_ext = anc
        lineage = np.zeros((len(self.class_names), n), dtype=np.float64)
        for c, node in enumerate(self.class_nodes):
            lineage[c, self._path_ext(node)[1:]] = 1.0
        self._lineage = lineage
        # the tree as a rustworkx graph: node i ↔ graph index i, root last
        graph = rx.PyDiGraph()
        graph.add_nodes_from([*self.nodes, self.root])
        graph.add_edges_from_no_data([(int(parent_ext[i]), i) for i in range(n)])
        self.graph = graph
        # all-pairs tree distances (rustworkx BFS in compiled code)
        self._dist_ext = rx.digraph_distance_matrix(graph, as_undirected=True).astype(np.int64)

    def _path_ext(self, i: int) -> list[int]:
        """Root → node path in "with root" indices (root = N)."""
        path = [i]
        while path[-1] != len(self.nodes):
            path.append(int(self._parent_ext[path[-1]]))
        return path[::-1]

    def _ext(self, i: int) -> int:
        i = int(i)
        if i == -1:
            return len(self.nodes)
        if not 0 <= i < len(self.nodes):
            raise IndexError(f"node index {i} out of range (0..{len(self.nodes) - 1}, or -1 for the root)")
        return i

    # ------------------------------------------------------------------ sizes and names
    @property
    def num_nodes(self) -> int:
        """Number of non-root nodes (the width of node-space outputs)."""
        return len(self.nodes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def index(self, name: str) -> int:
        """Node index of a node name (``-1`` for the root)."""
        if name == self.root:
            return -1
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"'{name}' is not a node of this taxonomy") from None

    def name(self, i: int) -> str:
        """Node name of a node index (``-1`` → root)."""
        return self.root if int(i) == -1 else self.nodes[self._ext(i)]

    @property
    def depths(self) -> list[int]:
        """Level of every node in node space (children of the root are level 1)."""
        return self._depth_ext[:-1].tolist()

    def depths_with_root(self) -> np.ndarray:
        """``(N+1,)`` levels, the root (level 0) last."""
        return self._depth_ext.copy()

    def depth(self, i: int) -> int:
        return int(self._depth_ext[self._ext(i)])

    def parent(self, i: int) -> int:
        """Parent index of node ``i`` (``-1`` when the parent is the root)."""
        p = int(self._parent_ext[self._ext(i)])
        return -1 if p in (-1, len(self.nodes)) else p

    def children(self, i: int) -> list[int]:
        """Children of node ``i`` (``-1`` = root), in node-index order."""
        return list(self._children[self._ext(i)])

    def is_leaf(self, i: int) -> bool:
        return not self._children[self._ext(i)]

    def ancestors(self, i: int, include_self: bool = True) -> list[int]:
        """Non-root nodes on the root → ``i`` path, top-down (the root itself is not listed)."""
        path = self._path_ext(self._ext(i))[1:]
        return path if include_self else path[:-1]

    def path_names(self, i: int, include_root: bool = True) -> list[str]:
        """Names on the root → ``i`` path, top-down (``-1`` → just the root)."""
        names = [self.nodes[j] for j in (self.ancestors(i) if int(i) != -1 else [])]
        return [self.root, *names] if include_root else names

    def class_path(self, c: int) -> list[int]:
        """Node indices on the root → leaf path of class ``c`` (root excluded)."""
        return self.ancestors(self.class_nodes[c])

    def edges(self) -> list[tuple[int, int]]:
        """``(parent, child)`` node-index pairs with a non-root parent (the penalty edges)."""
        return [(p, i) for i, p in enumerate(self.parents) if p >= 0]

    def edge_index(self) -> torch.Tensor:
        """``(E, 2)`` int64 tensor of :meth:`edges` (for vectorised losses)."""
        e = self.edges()
        return torch.tensor(e, dtype=torch.long) if e else torch.zeros((0, 2), dtype=torch.long)

    # ------------------------------------------------------------------ label matrices
    def lineage_matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(C, N)`` multi-hot: row ``c`` marks every node on class ``c``'s root → leaf path."""
        return torch.from_numpy(self._lineage).to(dtype)

    def node_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Multi-hot node targets ``(B, N)`` from class indices ``(B,)`` or soft targets ``(B, C)``.

        Soft (mixed) class targets give node marginals ``soft @ lineage``.
        """
        lineage = self.lineage_matrix(torch.float32).to(targets.device)
        if targets.dim() == 2:
            return targets.float() @ lineage
        return lineage[targets.long()]

    def ancestor_matrix(self) -> np.ndarray:
        """``(N, N)`` bool: ``[i, j]`` is true when ``j`` is ``i`` or an ancestor of ``i``."""
        n = self.num_nodes
        a = np.zeros((n, n), dtype=bool)
        for i in range(n):
            a[i, self.ancestors(i)] = True
        return a

    def class_to_node_probs(self, probs: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Node probabilities ``(B, N)`` from leaf-class probabilities ``(B, C)``.

        ``P(node) = Σ_{classes c under node} P(c)`` (sum of leaf probabilities up the tree), so
        the result is hierarchy-consistent (a child never exceeds its parent). Accepts and
        returns a torch tensor or a numpy array.
        """
        if isinstance(probs, torch.Tensor):
            return probs @ self.lineage_matrix(
                probs.dtype if probs.is_floating_point() else torch.float32
            ).to(probs.device)
        return np.asarray(probs, dtype=np.float64) @ self._lineage

    # ------------------------------------------------------------------ levels
    def ancestor_table(self) -> np.ndarray:
        """``(N+1, L+1)`` int: ``[i, l]`` is the ancestor of ``i`` at level ``l`` (the root is index
        ``N``, i.e. ``-1``); for ``l`` deeper than ``i`` the entry is ``i`` itself (padded path)."""
        return self._anc_ext.copy()

    def padded_class_paths(self) -> np.ndarray:
        """``(C, L)`` node indices of each class's path at levels ``1..L``, padded by repeating
        the leaf down to the deepest level (so all paths have equal length; SPEC §3.3)."""
        return self._anc_ext[self.class_nodes, 1:].copy()

    def level_nodes(self) -> list[list[int]]:
        """Per-level label sets: for level ``l = 1..L`` (list position ``l-1``) the distinct node
        indices at that level of the padded class paths, in node-index order."""
        paths = self.padded_class_paths()
        return [sorted(set(paths[:, level].tolist())) for level in range(paths.shape[1])]

    def class_level_targets(self) -> torch.Tensor:
        """``(C, L)`` int64: position of class ``c``'s level-``l`` node inside ``level_nodes()[l-1]``."""
        paths = self.padded_class_paths()
        out = np.empty_like(paths)
        for level, nodes in enumerate(self.level_nodes()):
            pos = {node: k for k, node in enumerate(nodes)}
            out[:, level] = [pos[int(x)] for x in paths[:, level]]
        return torch.from_numpy(out)

    def level_weights(self, mode: str = "inverse_level_size") -> torch.Tensor:
        """``(N,)`` per-node BCE weights.

        ``inverse_level_size``: ``w(node) = 1/|nodes at its level|``, normalised to mean 1
        ([INFERRED]: the seed's formula is unknown); ``none``: all ones.
        """
        if mode == "none":
            return torch.ones(self.num_nodes)
        if mode != "inverse_level_size":
            raise ValueError(f"level weight mode must be 'inverse_level_size' or 'none', got '{mode}'")
        depth = torch.tensor(self.depths)
        counts = torch.bincount(depth)
        w = 1.0 / counts[depth].float()
        return w * (w.numel() / w.sum())

    # ------------------------------------------------------------------ distances
    def distance_matrix(self) -> np.ndarray:
        """``(N+1, N+1)`` tree path lengths (number of edges), the root last."""
        return self._dist_ext.copy()

    def distance(self, u: int, v: int) -> int:
        """Tree path length between nodes ``u`` and ``v`` (``-1`` = root)."""
        return int(self._dist_ext[self._ext(u), self._ext(v)])

    def lca(self, u: int, v: int) -> int:
        """Lowest common ancestor of ``u`` and ``v`` (``-1`` when it is the root)."""
        a, b = self._ext(u), self._ext(v)
        level = (self._depth_ext[a] + self._depth_ext[b] - self._dist_ext[a, b]) // 2
        node = int(self._anc_ext[a, level])
        return -1 if node == self.num_nodes else node

    def lca_matrix(self) -> np.ndarray:
        """``(N+1, N+1)`` lowest common ancestors in "with root" indices (root = ``N``)."""
        d = self._depth_ext
        level = (d[:, None] + d[None, :] - self._dist_ext) // 2
        return np.take_along_axis(self._anc_ext, level, axis=1)

    def class_distance_matrix(self) -> np.ndarray:
        """``(C, C)`` tree distances between class leaves."""
        idx = np.asarray(self.class_nodes)
        return self._dist_ext[np.ix_(idx, idx)].copy()

    def class_lca_height_matrix(self) -> np.ndarray:
        """``(C_true, C_pred)``: height of LCA(true, pred) above the true leaf,
        ``depth(true) − depth(LCA)`` (0 on the diagonal; Bertinetto et al. 2020 for balanced trees)."""
        idx = np.asarray(self.class_nodes)
        lca = self.lca_matrix()[np.ix_(idx, idx)]
        return self._depth_ext[idx][:, None] - self._depth_ext[lca]

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of str / int / lists (safe for ``torch.load(weights_only=True)`` and JSON)."""
        return {
            "format": _FORMAT,
            "root": self.root,
            "nodes": list(self.nodes),
            "parents": list(self.parents),
            "class_names": list(self.class_names),
            "class_nodes": list(self.class_nodes),
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Taxonomy:
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise DataError(f"not a serialised taxonomy (expected format '{_FORMAT}')")
        return cls(
            root=data["root"],
            nodes=data["nodes"],
            parents=data["parents"],
            class_names=data["class_names"],
            class_nodes=data["class_nodes"],
            meta=data.get("meta") or {},
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Taxonomy):
            return NotImplemented
        a, b = self.to_dict(), other.to_dict()
        a.pop("meta")
        b.pop("meta")
        return a == b

    __hash__ = None  # type: ignore[assignment]

    # ------------------------------------------------------------------ display
    def render(self, max_lines: int | None = None) -> str:
        """The tree as indented text; class leaves show ``[class name]``.

        Example::

            artifact.n.01
            ├── clothing.n.01
            │   └── ...
        """
        label = {node: name for name, node in zip(self.class_names, self.class_nodes, strict=True)}
        lines = [self.root]

        def walk(i: int, prefix: str) -> None:
            kids = self._children[i]
            for k, child in enumerate(kids):
                last = k == len(kids) - 1
                tag = f"  [{label[child]}]" if child in label else ""
                lines.append(f"{prefix}{'└── ' if last else '├── '}{self.nodes[child]}{tag}")
                walk(child, prefix + ("    " if last else "│   "))

        walk(self.num_nodes, "")
        if max_lines is not None and len(lines) > max_lines:
            lines = [*lines[:max_lines], f"... ({len(lines) - max_lines} more lines)"]
        summary = (
            f"{self.num_classes} classes, {self.num_nodes} nodes below the root, depth {self.max_depth}"
            + (f", source {self.meta['source']}" if "source" in self.meta else "")
            + (f", rule {self.meta['rule']}" if "rule" in self.meta else "")
        )
        return "\n".join([*lines, summary])

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return f"Taxonomy(root={self.root!r}, classes={self.num_classes}, nodes={self.num_nodes}, depth={self.max_depth})"
