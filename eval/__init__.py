"""The shared scoring module: the study's protocol played with any assistant, its metrics and reports.

Layers, lowest first: ``records`` (the request and run records everything meets through), ``text``
(prompts), ``beliefs``, ``assistants``, ``lm`` (language-model assistants), ``protocol``, ``design`` (who
chooses the observed option sets: random or by exact information gain), ``metrics`` and ``report``,
``study`` (the study's released files).
"""

from eval.records import EvaluationRun, ProtocolData, Recommendation, RecommendRequest
from eval.assistants import Assistant, BayesianAssistant, OracleAssistant, RandomAssistant, make_assistant
from eval.protocol import run_protocol, simulate_protocol_data
from eval.design import DesignRecord, designed_protocol_data, run_designed_protocol
from eval.metrics import summarise_run
from eval.report import build_report, load_report, plot_reports, save_report

__all__ = ["Assistant", "BayesianAssistant", "DesignRecord", "designed_protocol_data", "run_designed_protocol", "EvaluationRun", "OracleAssistant", "ProtocolData", "RandomAssistant", "RecommendRequest", "Recommendation", "build_report", "load_report", "make_assistant", "plot_reports", "run_protocol", "save_report", "simulate_protocol_data", "summarise_run"]
