"""``LowRankConfig``: activation-aware mixed-rank factorisation of a ViT's Linear layers."""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from ...compress.config import MethodConfig, RecoveryConfig, check_positive, check_ratio
from ...reconstruct.config import ReconstructConfig

LAYER_KINDS = ("qkv", "proj", "fc1", "fc2")
SOLVERS = ("adam", "closed")
ALLOCATIONS = ("sensitivity", "error")


@dataclasses.dataclass(frozen=True)
class LowRankConfig(MethodConfig):
    """Options of the ``lowrank`` method (give exactly one of ``params_ratio`` / ``macs_ratio`` /
    ``latency_ratio``).

    params_ratio      params(compressed model) / params(model this step receives), everything counted
    macs_ratio        the same for MACs per image (optimizer.counting convention)
    latency_ratio     the same for the model's predicted latency on the table's backend and batch:
                      (dense model time − candidate layers' dense times) + Σ measured layer times
    latency_table     measured per-shape latencies (``latency.LatencyTable``): "ort" = measure them
                      now with ONNX Runtime on this machine, or a JSON file holding a table measured
                      on the deployment machine (a bare table, or a compress report/recipe with one).
                      With a params/MACs budget it caps every layer's rank at its measured
                      break-even, so no factorised layer runs slower than the dense one; the
                      latency budget uses it for costs ("ort" when not given)
    latency_batch     batch size the table is measured at ("ort")
    latency_threads   ONNX Runtime intra-op threads for the table ("ort"; None: physical cores)
    whiten            activation-aware SVD (True) or plain SVD of the weights (False)
    sequential        calibrate each block on the outputs of the already-factorised prefix (True) or
                      every layer on dense activations in one pass (False, default: on DeiT-Tiny it
                      gave lower KL to the dense model at every ratio and is ~2x faster)
    comp_fraction     share of each layer's rank given to the error-compensation term (0: none; the
                      paper's term, e.g. 0.25, is off by default: on DeiT-Tiny it did not clearly
                      help and cost 13x the calibration time, see benchmarks/results/lowrank_*)
    comp_steps        Adam steps of the compensation fit (0: no compensation)
    comp_lr           Adam learning rate, relative to the factors' RMS entry
    comp_solver       "adam" (gradient descent, the paper's) or "closed" (exact reduced-rank regression)
    refine_first      let the compensation fit also update the first (SVD) term
    comp_layers       which kinds of Linear get the compensation term
    comp_damp         ridge of the compensation fit, relative to mean(diag XᵀX) (it regresses dense
                      outputs on drifted inputs, which overfits without one)
    damp              λ = damp · mean(diag XᵀX) added before the Cholesky (raised ×10 when it fails)
    multiple          ranks are multiples of this (hardware-friendly GEMM shapes)
    allocation        "sensitivity": weight each layer's error by how much the model's output moves
                      when that layer alone is truncated (measured on probe_images); "error": plain
                      sum of per-layer relative output errors
    probe_images      calibration images used to measure the sensitivities
    layers            which Linears of each block may be factorised
    include_head      also consider the classifier head
    calib_images      calibration images (evenly spaced over the calibration folder)
    heldout_every     every k-th calibration image is held out for the reported errors (0: none)
    batch_size        calibration batch size
    merge             merge the two terms into one factor pair at the end (deployment form)
    recovery          distillation fine-tune from the dense teacher after factorising (the shared
                      RecoveryConfig; default: none)
    """

    params_ratio: Optional[float] = None
    macs_ratio: Optional[float] = None
    latency_ratio: Optional[float] = None
    latency_table: Optional[str] = None
    latency_batch: int = 8
    latency_threads: Optional[int] = None
    whiten: bool = True
    sequential: bool = False
    comp_fraction: float = 0.0
    comp_steps: int = 300
    comp_lr: float = 0.01
    comp_solver: str = "adam"
    refine_first: bool = True
    comp_damp: float = 1e-2
    comp_layers: Tuple[str, ...] = LAYER_KINDS
    damp: float = 1e-4
    multiple: int = 8
    allocation: str = "sensitivity"
    probe_images: int = 16
    layers: Tuple[str, ...] = LAYER_KINDS
    include_head: bool = False
    calib_images: int = 256
    heldout_every: int = 8
    batch_size: int = 32
    merge: bool = True
    recovery: RecoveryConfig = dataclasses.field(default_factory=RecoveryConfig)
    reconstruct: ReconstructConfig = dataclasses.field(default_factory=ReconstructConfig)

    def __post_init__(self):
        if sum(r is not None for r in (self.params_ratio, self.macs_ratio, self.latency_ratio)) != 1:
            raise ValueError("give exactly one of params_ratio (--params), macs_ratio (--macs) or "
                             "latency_ratio (--latency)")
        check_ratio("params_ratio", self.params_ratio)
        check_ratio("macs_ratio", self.macs_ratio)
        check_ratio("latency_ratio", self.latency_ratio)
        if self.latency_table is not None and (not isinstance(self.latency_table, str) or not self.latency_table):
            raise ValueError(f"latency_table must be 'ort' or a JSON file path, got {self.latency_table!r}")
        if not isinstance(self.latency_batch, int) or self.latency_batch < 1:
            raise ValueError(f"latency_batch must be a positive integer, got {self.latency_batch!r}")
        if self.latency_threads is not None and (not isinstance(self.latency_threads, int) or self.latency_threads < 1):
            raise ValueError(f"latency_threads must be a positive integer, got {self.latency_threads!r}")
        if not (0.0 <= self.comp_fraction < 1.0):
            raise ValueError(f"comp_fraction must be in [0, 1), got {self.comp_fraction!r}")
        check_positive("comp_steps", self.comp_steps, allow_zero=True)
        check_positive("comp_lr", self.comp_lr)
        if self.comp_solver not in SOLVERS:
            raise ValueError(f"comp_solver must be one of {', '.join(SOLVERS)}, got {self.comp_solver!r}")
        check_positive("damp", self.damp, allow_zero=True)
        check_positive("comp_damp", self.comp_damp, allow_zero=True)
        if not isinstance(self.multiple, int) or self.multiple < 1:
            raise ValueError(f"multiple must be a positive integer, got {self.multiple!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        check_positive("probe_images", self.probe_images)
        if any(k not in LAYER_KINDS + ("head",) for k in self.comp_layers):
            raise ValueError(f"comp_layers must be a subset of {', '.join(LAYER_KINDS)}, head; got {list(self.comp_layers)!r}")
        bad = [k for k in self.layers if k not in LAYER_KINDS]
        if bad or not self.layers and not self.include_head:
            raise ValueError(f"layers must be a non-empty subset of {', '.join(LAYER_KINDS)}, got {list(self.layers)!r}")
        check_positive("calib_images", self.calib_images)
        check_positive("heldout_every", self.heldout_every, allow_zero=True)
        if self.heldout_every == 1:
            raise ValueError("heldout_every=1 would hold out every image; use 0 (none) or >= 2")
        check_positive("batch_size", self.batch_size)
        if not isinstance(self.recovery, RecoveryConfig):
            raise ValueError(f"recovery must be a RecoveryConfig, got {self.recovery!r}")
        if not isinstance(self.reconstruct, ReconstructConfig):
            raise ValueError(f"reconstruct must be a ReconstructConfig, got {self.reconstruct!r}")

    @property
    def budget_kind(self) -> str:
        if self.params_ratio is not None:
            return "params"
        return "macs" if self.macs_ratio is not None else "latency"

    @property
    def ratio(self) -> float:
        return float({"params": self.params_ratio, "macs": self.macs_ratio,
                      "latency": self.latency_ratio}[self.budget_kind])

    @property
    def latency_source(self) -> Optional[str]:
        """Where the latency table comes from: "ort", a path, or None (not used)."""
        if self.latency_table is not None:
            return self.latency_table
        return "ort" if self.latency_ratio is not None else None

    @property
    def compensates(self) -> bool:
        return self.comp_fraction > 0 and (self.comp_steps > 0 or self.comp_solver == "closed")
