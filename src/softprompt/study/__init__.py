"""A whole study from one TOML config: prompt runs, baselines, analyses, report.

Layers, each importing only those above it in this list:
- `config`: the study config (`StudyConfig`, [train] as a `TrainConfig`) and its loader;
- `plan`: the units of work, where each writes, the keys that say whether it is done;
- `model_cache` (a process's `ModelCache`) and `result_cache` (the units' cached results); `timing` (each unit's
  seconds, the model's load apart, and the phase table);
- `units` (a prompt run, a baseline) and `analysis_units` (the analyses): doing one unit on a `ModelCache`;
- `executors` (local) and `ray_executor` (Ray tasks): running the units;
- `run`: `run_study`, which picks an executor and writes results.json and the report.
"""

from softprompt.study.config import AnalysisConfig, BaselineConfig, StudyConfig, load_study_config
from softprompt.study.executors import StudyProgress
from softprompt.study.model_cache import ModelCache
from softprompt.study.plan import Unit
from softprompt.study.run import run_study, study_dir
from softprompt.study.units import Study

__all__ = [
    "AnalysisConfig",
    "BaselineConfig",
    "ModelCache",
    "Study",
    "StudyConfig",
    "StudyProgress",
    "Unit",
    "load_study_config",
    "run_study",
    "study_dir",
]
