"""City -> country -> language two-hop task, the capitals task's companion on a task the default model does.

``data/languages.jsonl`` holds, per country, four to six well-known cities that are *not* its capital, with the
country and its main language (typed by hand). Several countries share a language (German: Germany and Austria;
Spanish: Spain, Mexico, Argentina; Portuguese: Portugal and Brazil; Arabic: Egypt and Saudi Arabia), so a
"which country" neuron group and a "which language" group can be told apart, and a patch between two countries
of one language is a control for a patch between two languages.

The two-hop prompt comes in a plain form and a chat form (the capitals paper's template); each hop has its own
prompt. Multi-token names ("Mar del Plata", "Saudi Arabia") are scored as :mod:`neuronlib.data.capitals` does:
first-token probabilities, with the whole name checked by greedy decoding (:func:`first_token_ids`).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import packaged, read_table
from .capitals import ANSWER_PREFILL, FirstTokenIds, first_token_ids  # noqa: F401  (re-exported)

COLUMNS = ("city", "country", "language")

TWO_HOP = "The main language spoken in the country where {city} is located is"
TWO_HOP_QUESTION = "What is the main language spoken in the country where {city} is located?"
CITY_TO_COUNTRY = "The city of {city} is located in the country of"
COUNTRY_TO_LANGUAGE = "The main language spoken in {country} is"
# The first hop in the two-hop prompt's frame (both end in " is located is"): the contrast for "say a language"
# neurons, so that the last-position contrast is not a contrast of different final tokens.
CITY_TO_COUNTRY_MATCHED = "The main country in which {city} is located is"


def load_languages(path: str | Path | None = None) -> pd.DataFrame:
    """The languages table with columns city, country, language (one row per city)."""
    df = read_table("languages.jsonl", COLUMNS, path)
    if df["city"].duplicated().any():
        dups = sorted(df.loc[df["city"].duplicated(), "city"])
        raise ValueError(f"{path or packaged('languages.jsonl')}: duplicate cities {dups}")
    return df


def two_hop_prompt(city: str) -> str:
    """The plain two-hop prompt (the next token is the language, after a space)."""
    return TWO_HOP.format(city=city)


def two_hop_chat_prompt(city: str, tokenizer) -> str:
    """The chat form, as the capitals paper asks: chat template with the question, assistant turn prefilled
    with "Answer:"."""
    messages = [{"role": "user", "content": TWO_HOP_QUESTION.format(city=city)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + ANSWER_PREFILL


def city_to_country_prompt(city: str) -> str:
    """First hop alone (the city is not the first token, which is the attention sink)."""
    return CITY_TO_COUNTRY.format(city=city)


def city_to_country_matched_prompt(city: str) -> str:
    """First hop in the two-hop prompt's frame (:data:`CITY_TO_COUNTRY_MATCHED`)."""
    return CITY_TO_COUNTRY_MATCHED.format(city=city)


def country_to_language_prompt(country: str) -> str:
    """Second hop alone."""
    return COUNTRY_TO_LANGUAGE.format(country=country)
