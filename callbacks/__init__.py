"""Lightning callbacks of nxm-lightning: ADMM (or SR-STE) sparsification and the hard prune that follows it."""

from callbacks.best_and_last_checkpoint import BestAndLastCheckpoint
from callbacks.finite_guard import FiniteGuardCallback
from callbacks.hard_prune import HardPruneCallback
from callbacks.nxm_sparsify import NxMSparsifyCallback
from callbacks.progress_log import ProgressLogCallback
from callbacks.rng_state import RNGStateCallback
from callbacks.save_pretrained import SavePretrainedCallback
from callbacks.srste import SRSTECallback

__all__ = [
    "BestAndLastCheckpoint",
    "FiniteGuardCallback",
    "HardPruneCallback",
    "NxMSparsifyCallback",
    "ProgressLogCallback",
    "RNGStateCallback",
    "SRSTECallback",
    "SavePretrainedCallback",
]
