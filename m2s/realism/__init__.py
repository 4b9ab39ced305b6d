"""Model-free realism report of a SemanticKITTI-layout draw (issue 27): class shares against real
SemanticKITTI, points per instance against range beside the geometric estimate, and the cue test.

Public API:

* :func:`build_report` — the whole report as a JSON-ready dict (:class:`Sensor`, :class:`Targets`);
* :func:`real_shares` / :func:`shares_from_counts` — class shares (:class:`Shares`);
* :func:`expected_points`, :func:`uniform_elevations`, :func:`hdl64e_elevations` — the geometric estimate;
* :func:`knn_predict`, :func:`macro_accuracy`, :func:`cue_test` — the cue test's classifier.
"""

from m2s.realism.cues import CueResult, cue_test, knn_predict, macro_accuracy, per_class_recall
from m2s.realism.density import NOMINAL_SIZES, expected_points, hdl64e_elevations, uniform_elevations
from m2s.realism.report import BACKGROUND_CLASSES, Sensor, Targets, build_report
from m2s.realism.shares import Shares, real_shares, shares_from_counts

__all__ = [
    "BACKGROUND_CLASSES",
    "CueResult",
    "NOMINAL_SIZES",
    "Sensor",
    "Shares",
    "Targets",
    "build_report",
    "cue_test",
    "expected_points",
    "hdl64e_elevations",
    "knn_predict",
    "macro_accuracy",
    "per_class_recall",
    "real_shares",
    "shares_from_counts",
    "uniform_elevations",
]
