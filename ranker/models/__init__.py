"""Multi-task ranking models (torch): input layer, SharedBottom / MMoE / PLE, towers, losses,
and the training wrapper with self-auxiliary heads.

Build with `build_model(kind, spec, tasks, config)`; `model(inputs)` returns {task: [N]} in natural
units and is the module exported to ONNX; `MultiTaskTrainingModel(model, aux)` computes the losses.
"""

from ranker.models.aux_heads import AUX_FORMS, AuxConfig
from ranker.models.base import REQUEST_INDEX, ModelConfig, ModelParts, MultiTaskModel
from ranker.models.builder import MODELS, build_model
from ranker.models.inputs import InputLayer, check_inputs, input_names
from ranker.models.losses import task_loss, task_output
from ranker.models.mmoe import MMoE, MMoEConfig
from ranker.models.ple import PLE, PLEConfig
from ranker.models.shared_bottom import SharedBottom, SharedBottomConfig
from ranker.models.training import MultiTaskTrainingModel, TrainingStep

__all__ = [
    "AUX_FORMS",
    "MODELS",
    "PLE",
    "REQUEST_INDEX",
    "AuxConfig",
    "InputLayer",
    "MMoE",
    "MMoEConfig",
    "ModelConfig",
    "ModelParts",
    "MultiTaskModel",
    "MultiTaskTrainingModel",
    "PLEConfig",
    "SharedBottom",
    "SharedBottomConfig",
    "TrainingStep",
    "build_model",
    "check_inputs",
    "input_names",
    "task_loss",
    "task_output",
]
