"""The study report: one self-contained HTML file (figures embedded) plus CSV tables of every number."""

from softprompt.report.html import write_report

__all__ = ["write_report"]
