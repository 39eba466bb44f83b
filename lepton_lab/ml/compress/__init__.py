"""Make a trained model smaller and faster, and say what it cost.

``compress(model, data=..., quantize="int8", prune=0.5)`` returns the compressed
model and a :class:`CompressionReport`: size on disk, latency at batch 1 and 64,
and the accuracy metric, before and after. A compression that loses more than
``tolerance`` points of the metric is refused unless ``force=True``.

PyTorch models get int8 dynamic quantization of Linear layers, structured
pruning (neurons and channels are removed, so the saved file really shrinks)
and knowledge distillation into a smaller student. XGBoost models get fewer
trees (best-iteration slicing) and XGBoost's ``prune`` updater.
"""

from lepton_lab.ml.compress.measure import EvalData, interleaved_latency, state_dict_bytes
from lepton_lab.ml.compress.pipeline import METRICS as METRICS
from lepton_lab.ml.compress.pipeline import compress
from lepton_lab.ml.compress.pytorch import AUTO_STUDENT_SCALE as AUTO_STUDENT_SCALE
from lepton_lab.ml.compress.pytorch import DISTILL_ALPHA as DISTILL_ALPHA
from lepton_lab.ml.compress.pytorch import DISTILL_EPOCHS as DISTILL_EPOCHS
from lepton_lab.ml.compress.pytorch import DISTILL_LR as DISTILL_LR
from lepton_lab.ml.compress.pytorch import DISTILL_TEMPERATURE as DISTILL_TEMPERATURE
from lepton_lab.ml.compress.pytorch import FINETUNE_EPOCHS as FINETUNE_EPOCHS
from lepton_lab.ml.compress.pytorch import FINETUNE_LR as FINETUNE_LR
from lepton_lab.ml.compress.report import CompressionRefused, CompressionReport, CompressionResult, Measurement
from lepton_lab.registry.modelspec import SPEC_FORMAT as SPEC_FORMAT
from lepton_lab.registry.modelspec import build_model, model_spec

__all__ = [
    "CompressionRefused",
    "CompressionReport",
    "CompressionResult",
    "EvalData",
    "Measurement",
    "build_model",
    "compress",
    "interleaved_latency",
    "model_spec",
    "state_dict_bytes",
]
