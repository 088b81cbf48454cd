"""Language models as assistants: loading (Hugging Face folders, hub ids, GGUF files, ``smollm2``), scoring
candidate answers (KV-cache reuse, shared-prefix trees), generating and parsing answers, and ``LMAssistant``.
"""

from eval.lm.convert import GGUFConversionError, cached_conversion, convert_gguf
from eval.lm.loading import LMLoadError, LoadedLM, dtype_from_name, load_causal_lm, prepare_loaded_lm, pretrained_source
from eval.lm.scoring import DialogueRequest, RoundRequest
from eval.lm.scorer import ChoiceScorer
from eval.lm.answers import answer_line, answer_sentence, parse_belief_answer, parse_option_answer
from eval.lm.assistant import LMAssistant

__all__ = ["ChoiceScorer", "DialogueRequest", "GGUFConversionError", "LMAssistant", "LMLoadError", "LoadedLM", "RoundRequest", "answer_line", "answer_sentence", "cached_conversion", "convert_gguf", "dtype_from_name", "load_causal_lm", "parse_belief_answer", "parse_option_answer", "prepare_loaded_lm", "pretrained_source"]
