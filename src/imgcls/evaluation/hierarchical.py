"""Hierarchical evaluation: metrics over a class taxonomy and confidence-thresholded prediction
(seed 002 goals 2 and 3; SPEC §3.4).

Inputs are the leaf-class probabilities every head predicts, ``class_probs`` ``(B, C)``, the
true class indices ``targets`` ``(B,)``, the :class:`~imgcls.taxonomy.Taxonomy`, and — for
multi-label heads — their node probabilities ``node_probs`` ``(B, N)`` (taxonomy node order).
For flat heads the node probabilities are derived: ``P(node) = Σ_{c under node} P(c)``.

Notation: ``path(v)`` = the non-root nodes on the root → ``v`` path (the root is always right
and never counted), ``ŷ_i`` the argmax class, ``y_i`` the true class, ``d(u, v)`` the tree
distance, ``depth`` the level (root 0), ``LCA`` the lowest common ancestor.

Entry point: :func:`hierarchical_metrics` (a JSON-serialisable dict); the curve is drawn by
:func:`plot_risk_coverage` (``risk_coverage.png``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgcls.taxonomy.tree import Taxonomy

#: τ grid of the risk–coverage / depth–precision curve. It reaches 0.99999 because margin heads
#: (ArcFace, SphereMulti) are very confident at inference: on Fashion-MNIST pixels their median
#: top probability is ≈ 0.99999, so a grid ending at 0.99 cannot separate their predictions.
DEFAULT_TAUS: tuple[float, ...] = (
    *(round(0.05 * k, 2) for k in range(19)),
    0.92,
    0.94,
    0.96,
    0.98,
    0.99,
    0.995,
    0.999,
    0.9999,
    0.99999,
)


def _np(x: Any, dtype: Any = np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _tables(taxonomy: Taxonomy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """depth (N+1,), LCA (N+1, N+1), distance (N+1, N+1); the root last (index -1)."""
    return taxonomy.depths_with_root(), taxonomy.lca_matrix(), taxonomy.distance_matrix()


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------


def threshold_decode(node_probs: Any, taxonomy: Taxonomy, tau: float) -> np.ndarray:
    """Deepest confident node per sample, ``(B,)`` node indices (``-1`` = root).

    Start at the root; while some child of the current node has probability ``≥ τ``, move to
    the most probable such child. The result is always a consistent root → node path; ``τ = 0``
    always reaches a leaf, ``τ`` above every probability stays at the root.
    """
    probs = _np(node_probs)
    b, n = probs.shape
    if n != taxonomy.num_nodes:
        raise ValueError(f"node_probs has {n} columns but the taxonomy has {taxonomy.num_nodes} nodes")
    kids = [taxonomy.children(i) for i in range(n)] + [taxonomy.children(-1)]
    width = max(len(k) for k in kids)
    pad = n + 1  # column of -inf
    table = np.full((n + 1, width), pad, dtype=np.int64)
    for i, k in enumerate(kids):
        table[i, : len(k)] = k
    ext = np.concatenate([probs, np.ones((b, 1)), np.full((b, 1), -np.inf)], axis=1)
    cur = np.full(b, n, dtype=np.int64)
    for _ in range(taxonomy.max_depth):
        cand = table[cur]  # (B, K)
        cp = np.take_along_axis(ext, cand, axis=1)
        best = cp.argmax(axis=1)
        move = cp[np.arange(b), best] >= tau
        cur = np.where(move, cand[np.arange(b), best], cur)
    return np.where(cur == n, -1, cur)


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def leaf_accuracy(class_probs: Any, targets: Any) -> float:
    """``mean_i 1[argmax_c P_i(c) = y_i]``."""
    return float((_np(class_probs).argmax(1) == _np(targets, np.int64)).mean())


def per_level_accuracy(pred_classes: Any, targets: Any, taxonomy: Taxonomy) -> dict[str, float]:
    """``level_ℓ``: ``mean_i 1[path_ℓ(ŷ_i) = path_ℓ(y_i)]`` over the padded class paths (a leaf
    above level ℓ counts as its own level-ℓ node), for ℓ = 1..L."""
    paths = taxonomy.padded_class_paths()
    pred, true = paths[_np(pred_classes, np.int64)], paths[_np(targets, np.int64)]
    return {f"level_{lv + 1}": float((pred[:, lv] == true[:, lv]).mean()) for lv in range(paths.shape[1])}


def hierarchical_prf(pred_nodes: Any, targets: Any, taxonomy: Taxonomy) -> dict[str, float]:
    """Set-based hierarchical precision / recall / F1 (Kiritchenko et al. 2005), micro-averaged:

    ``hP = Σ_i |P_i ∩ T_i| / Σ_i |P_i|``, ``hR = Σ_i |P_i ∩ T_i| / Σ_i |T_i|``,
    ``hF = 2·hP·hR / (hP + hR)`` with ``P_i = path(predicted node)``, ``T_i = path(leaf of y_i)``
    (root excluded, so ``|P ∩ T| = depth(LCA)``). ``pred_nodes`` are node indices (``-1`` = root,
    an empty prediction; hP is 1 when nothing at all is predicted)."""
    depth, lca, _ = _tables(taxonomy)
    pred = _np(pred_nodes, np.int64)
    leaf = np.asarray(taxonomy.class_nodes)[_np(targets, np.int64)]
    common = depth[lca[pred, leaf]].sum()
    n_pred, n_true = depth[pred].sum(), depth[leaf].sum()
    hp = float(common / n_pred) if n_pred > 0 else 1.0
    hr = float(common / n_true)
    hf = 2 * hp * hr / (hp + hr) if hp + hr > 0 else 0.0
    return {"hierarchical_precision": hp, "hierarchical_recall": hr, "hierarchical_f1": float(hf)}


def exact_path_match(node_probs: Any, targets: Any, taxonomy: Taxonomy, threshold: float = 0.5) -> float:
    """``mean_i 1[{j : q_ij ≥ t} = path(y_i)]``: the nodes on at threshold ``t`` are exactly the true path."""
    on = _np(node_probs) >= threshold
    truth = taxonomy.lineage_matrix().numpy().astype(bool)[_np(targets, np.int64)]
    return float((on == truth).all(axis=1).mean())


def violation_rate(node_probs: Any, taxonomy: Taxonomy, threshold: float = 0.5) -> float:
    """``mean_i 1[∃ edge (p, c), p ≠ root: q_ic ≥ t ∧ q_ip < t]`` — some child on while its parent
    is off. Zero by construction for node probabilities derived from class probabilities."""
    edges = np.asarray(taxonomy.edges(), dtype=np.int64).reshape(-1, 2)
    on = _np(node_probs) >= threshold
    return float((on[:, edges[:, 1]] & ~on[:, edges[:, 0]]).any(axis=1).mean()) if len(edges) else 0.0


def mistake_severity(pred_classes: Any, targets: Any, taxonomy: Taxonomy) -> dict[str, float | int | None]:
    """Over the wrong predictions only (Bertinetto et al., "Making better mistakes", 2020):
    ``mistake_severity`` = mean LCA height ``depth(y) − depth(LCA(ŷ, y))``, ``mistake_distance``
    = mean ``d(ŷ, y)``; ``None`` when there is no mistake."""
    pred, true = _np(pred_classes, np.int64), _np(targets, np.int64)
    wrong = pred != true
    out: dict[str, float | int | None] = {"num_mistakes": int(wrong.sum())}
    if not wrong.any():
        return {**out, "mistake_severity": None, "mistake_distance": None}
    height = taxonomy.class_lca_height_matrix()[true[wrong], pred[wrong]]
    dist = taxonomy.class_distance_matrix()[true[wrong], pred[wrong]]
    return {**out, "mistake_severity": float(height.mean()), "mistake_distance": float(dist.mean())}


def hierarchical_distance_at_k(class_probs: Any, targets: Any, taxonomy: Taxonomy, k: int) -> float:
    """Average hierarchical distance of the top-k (Bertinetto et al. 2020):
    ``mean_i mean_{c ∈ top-k(P_i)} [depth(y_i) − depth(LCA(c, y_i))]`` (0 for a correct class)."""
    probs = _np(class_probs)
    k = min(int(k), probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    height = taxonomy.class_lca_height_matrix()
    return float(height[_np(targets, np.int64)[:, None], top].mean())


def node_mean_average_precision(node_probs: Any, targets: Any, taxonomy: Taxonomy) -> float | None:
    """Macro mean of per-node average precision over nodes with both positives and negatives."""
    from sklearn.metrics import average_precision_score

    probs = _np(node_probs)
    truth = taxonomy.lineage_matrix().numpy()[_np(targets, np.int64)]
    cols = [j for j in range(truth.shape[1]) if 0 < truth[:, j].sum() < truth.shape[0]]
    if not cols:
        return None
    return float(np.mean([average_precision_score(truth[:, j], probs[:, j]) for j in cols]))


def thresholded_summary(node_probs: Any, targets: Any, taxonomy: Taxonomy, tau: float) -> dict[str, float]:
    """Quality of :func:`threshold_decode` at ``τ`` (``v_i`` = decoded node, ``l_i`` = true leaf):

    * ``coverage`` = fraction of samples decoded down to a leaf; ``risk`` = error rate among
      them (0 when none) — selective classification at leaf level;
    * ``node_precision`` = fraction of non-root decoded nodes that lie on the true path (1 when
      every sample stays at the root); ``abstain_rate`` = fraction left at the root;
    * ``mean_depth`` = mean ``depth(v_i)``; ``mean_relative_depth`` = mean ``min(depth(v_i)/depth(l_i), 1)``
      (1 = as specific as the truth; the cap only bites for wrong nodes deeper than the true leaf);
    * ``hierarchical_precision/recall/f1`` of the decoded nodes (:func:`hierarchical_prf`)."""
    depth, lca, _ = _tables(taxonomy)
    node = threshold_decode(node_probs, taxonomy, tau)
    leaf = np.asarray(taxonomy.class_nodes)[_np(targets, np.int64)]
    leaf_mask = np.array([taxonomy.is_leaf(i) for i in range(taxonomy.num_nodes)] + [False])  # root last
    is_leaf = leaf_mask[node]
    on_path = depth[lca[node, leaf]] == depth[node]
    emitted = node >= 0
    covered = int(is_leaf.sum())
    return {
        "tau": float(tau),
        "coverage": float(is_leaf.mean()),
        "risk": float((node[is_leaf] != leaf[is_leaf]).mean()) if covered else 0.0,
        "node_precision": float(on_path[emitted].mean()) if emitted.any() else 1.0,
        "abstain_rate": float((~emitted).mean()),
        "mean_depth": float(depth[node].mean()),
        "mean_relative_depth": float(np.minimum(depth[node] / depth[leaf], 1.0).mean()),
        **hierarchical_prf(node, targets, taxonomy),
    }


def risk_coverage_curve(
    node_probs: Any, targets: Any, taxonomy: Taxonomy, taus: Sequence[float] = DEFAULT_TAUS
) -> list[dict[str, float]]:
    """:func:`thresholded_summary` for every ``τ`` in ``taus`` (the risk–coverage and
    depth–precision curves)."""
    return [thresholded_summary(node_probs, targets, taxonomy, float(t)) for t in taus]


def coverage_at_precision(curve: Sequence[dict[str, float]], precision: float = 0.99) -> float:
    """Largest leaf ``coverage`` on the curve whose leaf precision ``1 − risk ≥ precision``
    (0 when no τ reaches it)."""
    ok = [p["coverage"] for p in curve if p["coverage"] > 0 and 1.0 - p["risk"] >= precision]
    return float(max(ok)) if ok else 0.0


def depth_at_precision(curve: Sequence[dict[str, float]], precision: float = 0.99) -> float:
    """Largest ``mean_relative_depth`` on the curve whose ``node_precision ≥ precision`` (how far
    down the tree the model can go while 99 % of the emitted nodes are right)."""
    ok = [p["mean_relative_depth"] for p in curve if p["node_precision"] >= precision]
    return float(max(ok)) if ok else 0.0


# ----------------------------------------------------------------------------------------------
# Plot and entry point
# ----------------------------------------------------------------------------------------------


def plot_risk_coverage(curve: Sequence[dict[str, float]], path: str | Path, title: str | None = None) -> Path:
    """Write ``risk_coverage.png``: leaf risk vs coverage, and node precision vs relative depth,
    over the τ grid (matplotlib Agg canvas, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    cov = [p["coverage"] for p in curve]
    risk = [p["risk"] for p in curve]
    left.plot(cov, risk, marker="o", ms=3)
    left.set_xlabel("coverage (fraction decoded to a leaf)")
    left.set_ylabel("risk (leaf error rate among covered)")
    left.set_title("Risk–coverage over τ")
    left.set_xlim(0, 1.02)
    left.grid(alpha=0.3)
    depth = [p["mean_relative_depth"] for p in curve]
    prec = [p["node_precision"] for p in curve]
    right.plot(depth, prec, marker="o", ms=3, color="tab:green")
    right.axhline(0.99, ls="--", lw=0.8, color="gray")
    right.set_xlabel("mean relative depth of the decoded node")
    right.set_ylabel("node precision (decoded node on the true path)")
    right.set_title("Depth–precision over τ")
    right.grid(alpha=0.3)
    for p in (curve[0], curve[len(curve) // 2], curve[-1]):
        left.annotate(f"τ={p['tau']:g}", (p["coverage"], p["risk"]), fontsize=7)
        right.annotate(f"τ={p['tau']:g}", (p["mean_relative_depth"], p["node_precision"]), fontsize=7)
    fig.suptitle(title or "Confidence-thresholded hierarchical prediction")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def hierarchical_metrics(
    class_probs: Any,
    targets: Any,
    taxonomy: Taxonomy,
    node_probs: Any | None = None,
    taus: Sequence[float] = DEFAULT_TAUS,
    threshold: float = 0.5,
    top_k: Sequence[int] = (1, 5),
) -> dict[str, Any]:
    """All hierarchical metrics as a JSON-serialisable dict.

    Args:
        class_probs: ``(B, C)`` leaf-class probabilities (``head.predict``).
        targets: ``(B,)`` true class indices.
        taxonomy: the run's taxonomy.
        node_probs: ``(B, N)`` node probabilities of a node-space head (``head.predict_nodes``);
            None → derived from ``class_probs`` (``taxonomy.class_to_node_probs``).
        taus: τ grid of the risk–coverage curve.
        threshold: the user's τ (``eval.hier_threshold``) for the ``thresholded`` summary.
        top_k: ks of the hierarchical distance@k.
    """
    probs = _np(class_probs)
    y = _np(targets, np.int64)
    if probs.shape != (y.shape[0], taxonomy.num_classes):
        raise ValueError(f"class_probs must be (B, {taxonomy.num_classes}) for B targets, got {probs.shape}")
    source = "head" if node_probs is not None else "classes"
    nodes = _np(node_probs) if node_probs is not None else taxonomy.class_to_node_probs(probs)
    pred = probs.argmax(1)
    leaf_pred = np.asarray(taxonomy.class_nodes)[pred]
    curve = risk_coverage_curve(nodes, y, taxonomy, taus)
    out: dict[str, Any] = {
        "leaf_accuracy": leaf_accuracy(probs, y),
        "per_level_accuracy": per_level_accuracy(pred, y, taxonomy),
        **hierarchical_prf(leaf_pred, y, taxonomy),
        "exact_path_match": exact_path_match(nodes, y, taxonomy),
        "violation_rate": violation_rate(nodes, taxonomy),
        "node_probs_source": source,
        **mistake_severity(pred, y, taxonomy),
        **{f"hier_distance@{k}": hierarchical_distance_at_k(probs, y, taxonomy, k) for k in top_k},
        "node_map": node_mean_average_precision(nodes, y, taxonomy),
        "threshold": float(threshold),
        "thresholded": thresholded_summary(nodes, y, taxonomy, threshold),
        "coverage_at_99_precision": coverage_at_precision(curve, 0.99),
        "depth_at_99_precision": depth_at_precision(curve, 0.99),
        "risk_coverage": curve,
        "num_nodes": taxonomy.num_nodes,
        "max_depth": taxonomy.max_depth,
    }
    return out
