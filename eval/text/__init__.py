"""How a dialogue reads to a language model: the dialogue text, the prompt templates that word it, and the
chat format that turns messages into tokens.  Both evaluation and teaching write their prompts through it.
"""

from eval.text.prompt_template import PromptTemplate, PromptTemplateError, default_template, load_template, save_template, template_for_model
from eval.text.dialogue import candidate_answers, dialogue_messages, heldout_prompt_messages, options_text
from eval.text.chat_format import ChatTemplateError, chat_segments, render_chat, tokenize_chat

__all__ = ["ChatTemplateError", "PromptTemplate", "PromptTemplateError", "candidate_answers", "chat_segments", "default_template", "dialogue_messages", "heldout_prompt_messages", "load_template", "options_text", "render_chat", "save_template", "template_for_model", "tokenize_chat"]
