"""City -> state -> capital two-hop task (Lindsey et al. 2025; docs/method.md §6).

``data/capitals.jsonl`` holds one well-known non-capital city per US state, so answering the
capital needs two hops (city -> state -> capital). Prompts follow the paper exactly; the single
hops are used to check that the model knows each step on its own.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple, Sequence

import pandas as pd

from . import read_table

logger = logging.getLogger(__name__)

COLUMNS = ("city", "state", "capital")

TWO_HOP_QUESTION = "What is the capital of the state containing {city}?"
ANSWER_PREFILL = "Answer:"


def load_capitals(path: str | Path | None = None) -> pd.DataFrame:
    """The capitals table with columns city, state, capital (one row per state)."""
    return read_table("capitals.jsonl", COLUMNS, path)


def two_hop_prompt(city: str, tokenizer) -> str:
    """The paper's prompt: the model's chat template with the user question, then the assistant
    turn prefilled with "Answer:" (so the next token is the answer, after a space)."""
    messages = [{"role": "user", "content": TWO_HOP_QUESTION.format(city=city)}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + ANSWER_PREFILL


SEEDED_PREFILL = "Answer: The capital is"
FACT = "Fact: the capital of the state containing {city} is"


def two_hop_seeded_prompt(city: str, tokenizer) -> str:
    """The paper's chat prompt with the answer seeded further ("Answer: The capital is"), so that a model that
    would start with a sentence ("Answer: The capital of Texas is ...") names the capital next."""
    return two_hop_prompt(city, tokenizer)[: -len(ANSWER_PREFILL)] + SEEDED_PREFILL


def two_hop_fact_prompt(city: str) -> str:
    """The two-hop question as a plain statement to complete, no chat template ("Fact: the capital of the state
    containing Dallas is"): the form a small base-like model answers most often."""
    return FACT.format(city=city)


def city_to_state_prompt(city: str) -> str:
    """First hop alone."""
    return f"{city} is a city in the state of"


def state_to_capital_prompt(state: str) -> str:
    """Second hop alone."""
    return f"The capital of the state of {state} is the city of"


FRAME = "The {relation} of {name} is located in the {kind} of"


def frame_capital_prompt(state: str) -> str:
    """One frame, two answers: this prompt's answer is a capital ("The capital of Texas is located in the city
    of"); :func:`frame_state_prompt` puts a city in the same frame and its answer is a state. The pair differs
    only in the relation word, the name and the kind word, so a neuron that separates them reads the kind of
    answer, not a template."""
    return FRAME.format(relation="capital", name=state, kind="city")


def frame_state_prompt(city: str) -> str:
    """The :data:`FRAME` prompt whose answer is a state ("The city of Dallas is located in the state of")."""
    return FRAME.format(relation="city", name=city, kind="state")


class FirstTokenIds(NamedTuple):
    """``ids[i]``: first token of ``" " + names[i]``. Multi-token answers (``multi_token``) are
    scored by that first token only, so names sharing a first token (``shared``: token id ->
    names, e.g. " New" for New York / New Jersey) cannot be told apart by it."""

    ids: list[int]
    multi_token: list[str]
    shared: dict[int, list[str]]


def first_token_ids(names: Sequence[str], tokenizer) -> FirstTokenIds:
    """First token id of each answer with a leading space (the answer follows "of"/"Answer:")."""
    ids: list[int] = []
    multi: list[str] = []
    by_id: dict[int, list[str]] = {}
    for name in names:
        toks = tokenizer(" " + name, add_special_tokens=False)["input_ids"]
        if not toks:
            raise ValueError(f"{name!r} tokenises to nothing")
        ids.append(toks[0])
        if len(toks) > 1:
            multi.append(name)
        if name not in by_id.setdefault(toks[0], []):
            by_id[toks[0]].append(name)
    shared = {i: ns for i, ns in by_id.items() if len(ns) > 1}
    if multi:
        logger.info("scored by first token only (multi-token): %s", multi)
    if shared:
        logger.warning("names sharing a first token: %s", list(shared.values()))
    return FirstTokenIds(ids, multi, shared)
