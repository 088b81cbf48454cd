"""The study's released evaluation files: readers (flight, hotel, flight_<n>features, flight_human,
webshop) into ``ProtocolData``, and ``replay_study``, which plays them through the same protocol.
"""

from eval.study.files import StudyDataError, StudyReplay
from eval.study.released import load_study
from eval.study.replay import NoExactAssistantError, replay_study

__all__ = ["NoExactAssistantError", "StudyDataError", "StudyReplay", "load_study", "replay_study"]
