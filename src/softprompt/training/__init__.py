"""Training one run: `train()` and what the loop is made of.

- `recipe`: `train()`, setup then the loop then `finalize` (artifacts, reference evaluations, run.json
  complete); `TrainResult`;
- `loop`: `TrainingLoop`, the epochs: forward+backward -> optimiser step -> (maybe) read, evaluate,
  checkpoint; at each epoch's end evaluate, select, checkpoint;
- `step`: `TrainStep`, one micro-batch's loss and gradients (eager or a CUDA graph), the optimiser step,
  the one read of the queued losses and the divergence check;
- `lifecycle`: the run directory (lock, claim, refusals on resume), run.json while running and how it ended,
  the progress bar, `run_record`;
- `checkpoints`: the loop state, checkpoint write and restore, the best prompt's file;
- `evaluation`: the validation and dev evaluations between steps (`Evaluations`, the run's `Evaluator`);
- `selection`: which prompt is the run's best (pure functions);
- `data`, `trainables`: what is trained on (`TrainData`, the epochs' order) and what is trained
  (`Trainables`, the optimiser and its schedule);
- `cuda_graphs`: a training step replayed from a CUDA graph per batch shape (`StepGraphs`, on CUDA);
- `trackers`: `--report-to`'s experiment trackers (TensorBoard, MLflow, W&B);
- `baseline_runs`: every baseline of a task, trained or evaluated (`run_baselines`).
"""

from softprompt.training.data import TrainData, epoch_order, prepare_data
from softprompt.training.lifecycle import RunComplete, compute_dtype_name, run_record
from softprompt.training.loop import TrainingLoop
from softprompt.training.recipe import TrainResult, finalize, train
from softprompt.training.selection import select_prompt
from softprompt.training.step import TrainStep
from softprompt.training.trainables import Trainables, build_trainables, lr_lambda

__all__ = [
    "RunComplete",
    "TrainData",
    "TrainResult",
    "TrainStep",
    "Trainables",
    "TrainingLoop",
    "build_trainables",
    "compute_dtype_name",
    "epoch_order",
    "finalize",
    "lr_lambda",
    "prepare_data",
    "run_record",
    "select_prompt",
    "train",
]
