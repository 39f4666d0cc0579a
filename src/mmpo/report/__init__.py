"""``mmpo report``: one self-contained HTML page per set of runs (:func:`write_report`)."""

from mmpo.report.html import CURVE_GROUPS, ReportWritten, render_report, write_report
from mmpo.report.runs import Answer, GalleryItem, Run, load_run

__all__ = ["CURVE_GROUPS", "Answer", "GalleryItem", "ReportWritten", "Run", "load_run", "render_report",
           "write_report"]
