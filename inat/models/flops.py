"""Question 1 of the assignment: parameters and computations of the scratch CNN, in closed form.

Notation (the assignment's): the input is S x S x 3; conv block i (i = 1..5) has m_i filters of size
k_i x k_i; the dense layer has n neurons; there are C output classes (10 for iNaturalist-12K).
Write m_0 = 3 and S_0 = S. Every conv uses "same" padding and stride 1, so block i's conv runs at
side S_{i-1}; its 2x2 max-pool (stride 2, "valid") floors odd sides: S_i = floor(S_{i-1} / 2), hence
S_5 = floor(S / 32) (97 -> 48 -> 24 -> 12 -> 6 -> 3).

Parameters (exactly what Keras's `count_params()` reports):

    params = sum_i [ k_i^2 m_{i-1} m_i + m_i ]      conv kernels + biases
           + m_5 S_5^2 n + n                        dense
           + n C + C                                output layer

  With batch_norm the conv bias is dropped (BN's beta replaces it) and BN adds 4 m_i per block
  (gamma, beta trainable; moving mean, moving variance not): replace "+ m_i" by "+ 4 m_i", of which
  2 m_i are non-trainable.

Computations, counted as multiply-accumulates (MACs) of the conv and dense layers:

    MACs  = sum_i S_{i-1}^2 k_i^2 m_{i-1} m_i  +  m_5 S_5^2 n  +  n C
    FLOPs = 2 * MACs    (one multiply and one add each)

  Bias additions, batch norm, activations, pooling and softmax are not in these two numbers; they are
  small (O(S^2 m) each, against O(S^2 k^2 m^2)) and are reported separately in `other_ops`:
  bias adds (1 per output element), batch norm at inference (2 per element: scale and shift),
  activation (1 per element) and max-pool (3 comparisons per 2x2 window).

With the same m and k in every block and S divisible by 32 this is the textbook form:

    params = (3k^2 m + m) + 4(k^2 m^2 + m) + m (S/32)^2 n + n + (n C + C)
    MACs   = k^2 m S^2 (3 + m (1/4 + 1/16 + 1/64 + 1/256)) + m (S/32)^2 n + n C

For Part B models there is no formula here: `count` builds the model (without weights) and reports
Keras's parameter counts only.
"""

from __future__ import annotations

from typing import Any


def count(cfg, n_classes: int) -> dict[str, Any]:
    """Parameters and MACs/FLOPs for `cfg`; keys: params, trainable_params, macs, flops, layers,
    other_ops, formula (True when the closed form was used)."""
    if cfg.is_transfer:
        return _count_transfer(cfg, n_classes)

    S, n, C, bn = cfg.image_size, cfg.num_dense, n_classes, cfg.batch_norm
    rows: list[dict[str, Any]] = []
    other = {"bias_add": 0, "batch_norm": 0, "activation": 0, "max_pool": 0}
    side, m_prev = S, 3
    for i, (m, k) in enumerate(zip(cfg.filt_org, cfg.kernel_size), start=1):
        conv_params = k * k * m_prev * m + (0 if bn else m)
        rows.append(_row(f"conv{i}", (side, side, m), conv_params, side * side * k * k * m_prev * m))
        elements = side * side * m
        if bn:
            rows.append(_row(f"bn{i}", (side, side, m), 4 * m, 0, non_trainable=2 * m))
            other["batch_norm"] += 2 * elements
        else:
            other["bias_add"] += elements
        other["activation"] += elements
        side //= 2  # "valid" 2x2 pooling floors odd sides
        other["max_pool"] += 3 * side * side * m
        rows.append(_row(f"pool{i}", (side, side, m), 0, 0))
        m_prev = m
    flat = side * side * m_prev  # m_5 * S_5^2
    rows.append(_row("dense", (n,), flat * n + n, flat * n))
    rows.append(_row("predictions", (C,), n * C + C, n * C))
    other["bias_add"] += n + C
    other["activation"] += n

    params = sum(r["params"] for r in rows)
    macs = sum(r["macs"] for r in rows)
    return {
        "model": cfg.model,
        "formula": True,
        "params": params,
        "trainable_params": params - sum(r["non_trainable"] for r in rows),
        "macs": macs,
        "flops": 2 * macs,
        "layers": rows,
        "other_ops": other,
    }


def _row(name: str, shape: tuple, params: int, macs: int, non_trainable: int = 0) -> dict[str, Any]:
    return {
        "name": name, "output": shape, "params": params, "non_trainable": non_trainable, "macs": macs
    }


def _count_transfer(cfg, n_classes: int) -> dict[str, Any]:
    from .common import make_model  # lazy: building needs Keras; weights are not needed to count

    model = make_model(cfg.replace(weights="none"), n_classes)
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    return {
        "model": cfg.model,
        "formula": False,
        "params": model.count_params(),
        "trainable_params": trainable,
        "macs": None,
        "flops": None,
        "layers": [],
        "other_ops": {},
        "note": "closed-form formula only for the scratch CNN; counts are Keras's",
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of `count`'s result, for the CLI and the report."""
    lines = []
    if result["layers"]:
        lines.append(f"{'layer':<12} {'output':>16} {'params':>14} {'MACs':>18}")
        for r in result["layers"]:
            shape = "x".join(str(d) for d in r["output"])
            lines.append(f"{r['name']:<12} {shape:>16} {r['params']:>14,} {r['macs']:>18,}")
        lines.append("-" * 63)
    lines.append(f"{'total params':<29} {result['params']:>14,}")
    lines.append(f"{'trainable params':<29} {result['trainable_params']:>14,}")
    if result["macs"] is not None:
        lines.append(f"{'MACs (conv + dense)':<29} {result['macs']:>33,}")
        lines.append(f"{'FLOPs (= 2 x MACs)':<29} {result['flops']:>33,}")
        for kind, ops in result["other_ops"].items():
            lines.append(f"{'  not counted: ' + kind:<29} {ops:>33,}")
    else:
        lines.append(f"({result['model']}: {result['note']})")
    return "\n".join(lines)
