"""The analyses' results as typed records: the records of neighbors.json, geometry.json, transfer.json and
transfer_init.json now live in `softprompt.records` (one module per file); they are imported from here too.

Each `*_report` checks its own output against its record (a field the record declares and the JSON lacks is an
error naming it), and writes the record's `to_dict()`.
"""

from __future__ import annotations

from softprompt.records.geometry import (  # noqa: F401
    Drift,
    DriftVsDifficulty,
    Equidistance,
    GeometryResult,
    GeometryRun,
    GeometrySummary,
    TaskDrift,
)
from softprompt.records.neighbors import (  # noqa: F401
    NeighborsResult,
    NeighborsSummary,
    NeighborToken,
    Position,
    ProjectionRow,
    RunNeighbors,
    Scripts,
    TaskScripts,
    TaskSurvival,
)
from softprompt.records.readouts import DescribeResult, ImportanceResult  # noqa: F401
from softprompt.records.transfer import (  # noqa: F401
    Correlation,
    TransferInitCorrelation,
    TransferInitPair,
    TransferInitResult,
    TransferMatrix,
    TransferResult,
    TransferSummary,
)
