import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from neuronlib.data.capitals import (  # noqa: E402
    city_to_state_prompt,
    first_token_ids,
    load_capitals,
    state_to_capital_prompt,
    two_hop_prompt,
)

US_STATES = {
    "Alabama", "Alaska", "Arizona", "Arkansas", "California", "Colorado", "Connecticut", "Delaware",
    "Florida", "Georgia", "Hawaii", "Idaho", "Illinois", "Indiana", "Iowa", "Kansas", "Kentucky",
    "Louisiana", "Maine", "Maryland", "Massachusetts", "Michigan", "Minnesota", "Mississippi",
    "Missouri", "Montana", "Nebraska", "Nevada", "New Hampshire", "New Jersey", "New Mexico",
    "New York", "North Carolina", "North Dakota", "Ohio", "Oklahoma", "Oregon", "Pennsylvania",
    "Rhode Island", "South Carolina", "South Dakota", "Tennessee", "Texas", "Utah", "Vermont",
    "Virginia", "Washington", "West Virginia", "Wisconsin", "Wyoming",
}


@pytest.fixture(scope="module")
def tok(smollm):
    """The SmolLM2 tokenizer, from the session's default model (its safetensors cache)."""
    return smollm.tokenizer


def test_table_has_one_non_capital_city_per_state():
    df = load_capitals()
    assert list(df.columns) == ["city", "state", "capital"]
    assert len(df) == 50
    assert set(df["state"]) == US_STATES
    assert (df["city"] != df["capital"]).all()
    # No prompt city is any state's capital, and none names its state (that would skip hop one).
    assert not set(df["city"]) & set(df["capital"])
    assert not any(row.state in row.city for row in df.itertuples())


@pytest.mark.parametrize("city,state,capital", [
    ("Dallas", "Texas", "Austin"),
    ("Chicago", "Illinois", "Springfield"),
    ("Los Angeles", "California", "Sacramento"),
    ("Tucson", "Arizona", "Phoenix"),
    ("Seattle", "Washington", "Olympia"),
    ("Miami", "Florida", "Tallahassee"),
])
def test_known_facts(city, state, capital):
    df = load_capitals().set_index("city")
    assert df.loc[city, "state"] == state
    assert df.loc[city, "capital"] == capital


def test_load_capitals_rejects_missing_column(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"city": "Dallas", "state": "Texas"}) + "\n")
    with pytest.raises(ValueError, match="capital"):
        load_capitals(p)


def test_prompts(tok):
    assert city_to_state_prompt("Dallas") == "Dallas is a city in the state of"
    assert state_to_capital_prompt("Texas") == "The capital of the state of Texas is the city of"
    p = two_hop_prompt("Dallas", tok)
    msgs = [{"role": "user", "content": "What is the capital of the state containing Dallas?"}]
    assert p == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + "Answer:"
    # The prefill sits inside the assistant turn, after the user's question.
    assert p.index("containing Dallas?") < p.rindex("assistant") < p.index("Answer:")
    assert p.endswith("assistant\nAnswer:")


def test_first_token_ids(tok):
    names = ["Austin", "Salt Lake City", "New York", "New Jersey", "Texas"]
    res = first_token_ids(names, tok)
    expected = [tok(" " + n, add_special_tokens=False)["input_ids"][0] for n in names]
    assert res.ids == expected
    # Single tokens with a leading space: " Austin" decodes back to itself.
    assert tok.decode([res.ids[0]]) == " Austin"
    assert "Austin" not in res.multi_token and "Texas" not in res.multi_token
    assert {"Salt Lake City", "New York", "New Jersey"} <= set(res.multi_token)
    assert res.shared[res.ids[2]] == ["New York", "New Jersey"]
    assert res.ids[0] not in res.shared


def test_frame_prompts_differ_only_in_relation_name_and_kind():
    from neuronlib.data.capitals import frame_capital_prompt, frame_state_prompt

    assert frame_capital_prompt("Texas") == "The capital of Texas is located in the city of"
    assert frame_state_prompt("Dallas") == "The city of Dallas is located in the state of"
