"""The quality targets a report judges against: one table for digits (where they were set), one for real data.

Real data (Fashion-MNIST, ``shapes:32``, any other set) follows issue 17's acceptance: CAS ratio >= 0.98,
label fidelity >= the domain classifier's own real-test accuracy, FID <= 10x its floor, gain over classical
augmentation >= +2 pp at k = 50, long-tailed balanced accuracy >= +5 pp over oversampling, near-copies
<= 0.5 %.
"""

from __future__ import annotations

import math

FID_FLOOR_FACTOR = {"cgan": 1.5, "cvae": 2.0}  # digits: FID <= factor x real-train-vs-real-test floor
FID_FLOOR_FACTOR_REAL = 10.0  # real data: FID <= 10x the floor
GAIN_HEAD_K = {"digits": 10, "real": 50}  # the k whose gain is the headline
GAIN_DEFAULT_K = {"digits": (5, 10, 50), "real": (10, 50, 200)}  # genaug eval's default k values

TARGETS = {
    "digits": {
        "cas_ratio": ">= 0.99",
        "label_fidelity": ">= 0.995",
        "fid": "<= 1.5x floor (cgan) / 2x floor (cvae)",
        "augmentation_gain": ">= +3 pp at k=10",
        "gain_over_classical": "-",
        "long_tail_gain": "-",
        "memorisation": "<= 0.5 % near-copies",
    },
    "real": {
        "cas_ratio": ">= 0.98",
        "label_fidelity": ">= the classifier's test accuracy",
        "fid": "<= 10x floor",
        "augmentation_gain": "-",
        "gain_over_classical": ">= +2 pp at k=50",
        "long_tail_gain": ">= +5 pp",
        "memorisation": "<= 0.5 % near-copies",
    },
}


def domain(spec: str) -> str:
    """``"digits"`` for scikit-learn's digits, else ``"real"``."""
    return "digits" if spec.strip().lower() == "digits" else "real"


def target(
    name: str,
    value: float | None,
    model_type: str,
    kind: str,
    *,
    floor: float | None = None,
    reference: float | None = None,
) -> tuple[str, bool | None]:
    """Target text of metric ``name`` for a ``kind`` ("digits" | "real") dataset and whether ``value``
    meets it (None when it cannot be judged). ``floor``: the FID floor; ``reference``: the domain
    classifier's test accuracy (real data's label-fidelity bar)."""
    text = TARGETS[kind].get(name, "-")
    if text == "-" or value is None or (isinstance(value, float) and not math.isfinite(value)):
        return text, None
    digits = kind == "digits"
    if name == "cas_ratio":
        return text, value >= (0.99 if digits else 0.98)
    if name == "label_fidelity":
        if digits:
            return text, value >= 0.995
        if reference is None:
            return text, None
        return f">= {reference:.4f} (the classifier's test accuracy)", value >= reference
    if name == "fid":
        factor = FID_FLOOR_FACTOR.get(model_type, 2.0) if digits else FID_FLOOR_FACTOR_REAL
        if floor is None:
            return f"<= {factor:g}x floor", None
        return f"<= {factor:g}x floor = {factor * floor:.3g}", value <= factor * floor
    if name == "augmentation_gain":
        return text, value >= 3.0
    if name == "gain_over_classical":
        return text, value >= 2.0
    if name == "long_tail_gain":
        return text, value >= 5.0
    if name == "memorisation":
        return "<= 0.5 %", value <= 0.005
    return text, None
