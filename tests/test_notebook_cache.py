"""Session.cached: notebook steps re-used from the results cache only when their inputs and our code are the same."""
import numpy as np
import pandas as pd
import pytest
import torch

from neuronlib.paper.notebook import Session, fingerprint
from neuronlib.sites import Node


def session(tmp_path, refresh=False):
    return Session(model_name="tiny-llama", smoke=True, figures=tmp_path, results=tmp_path, cache=tmp_path / "cache",
                   refresh=refresh, threads=1, name="test")


def test_fingerprints_follow_content():
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    assert fingerprint(frame) == fingerprint(frame.copy())
    assert fingerprint(frame) != fingerprint(frame.assign(a=[1, 3]))
    lists = pd.DataFrame({"words": [["hot", "cold"], ["big"]]})  # cells pandas cannot hash
    assert fingerprint(lists) == fingerprint(lists.copy())
    assert fingerprint(lists) != fingerprint(pd.DataFrame({"words": [["hot", "cold"], ["small"]]}))
    assert fingerprint(torch.ones(3)) != fingerprint(torch.ones(4))
    assert fingerprint(torch.ones(3)) != fingerprint(torch.ones(3, dtype=torch.float64))
    assert fingerprint(np.arange(3)) != fingerprint(np.arange(1, 4))
    assert fingerprint([Node("mlp_acts", 1, 2, 3)]) != fingerprint([Node("mlp_acts", 1, 2, 4)])
    assert fingerprint({"b": 1, "a": 2}) == fingerprint({"a": 2, "b": 1})

    def f(x):
        return x + 1

    def g(x):
        return x + 2

    assert fingerprint(f) != fingerprint(g)  # a notebook's own function: by its code
    one, two, src = {}, {}, "def h(x):\n    return (lambda y: y + 1)(x)\n"
    exec(src, one)
    exec(src, two)
    assert fingerprint(one["h"]) == fingerprint(two["h"])  # nested code by content, not by the object's address
    with pytest.raises(TypeError, match="fingerprint"):
        fingerprint(object())


def test_cached_step_reuses_only_the_same_inputs(tmp_path):
    calls = []

    def step(frame, scale, *, offset=0):
        calls.append(1)
        return frame.assign(y=frame.x * scale + offset)

    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    s = session(tmp_path)
    first = s.cached("scale", step, frame, 2.0, offset=1)
    again = s.cached("scale", step, frame, 2.0, offset=1)
    assert len(calls) == 1
    pd.testing.assert_frame_equal(first, again)
    s.cached("scale", step, frame, 3.0, offset=1)
    s.cached("scale", step, frame.assign(x=[1.0, 2.0, 4.0]), 2.0, offset=1)
    s.cached("scale", step, frame, 2.0, offset=2)
    assert len(calls) == 4
    session(tmp_path, refresh=True).cached("scale", step, frame, 2.0, offset=1)  # REFRESH recomputes
    assert len(calls) == 5


def test_session_save_records_the_runs_parameters(tmp_path):
    import json

    s = session(tmp_path)
    s.params = {"N_PERM": 7, "SMOKE": True}
    path = s.save(pd.DataFrame({"a": [1, 2]}), "t", "two rows")
    meta = json.loads((tmp_path / "t.json").read_text())
    assert path == tmp_path / "t.csv" and pd.read_csv(path)["a"].tolist() == [1, 2]
    assert meta["parameters"]["N_PERM"] == 7 and meta["model"] == "tiny-llama" and meta["description"] == "two rows"
    s.save(pd.DataFrame({"a": [3]}), "u", "other model", model="gemma3-270m")
    assert json.loads((tmp_path / "u.json").read_text())["model"] == "gemma3-270m"
