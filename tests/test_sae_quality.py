"""The SAE quality gate (neuronlib.paper.sae_baselines.sae_quality / quality_gate): explained variance of every
baseline SAE on the SVA prompts themselves, position 0 included, >= 0.8 on mlp_out and >= 0.9 on resid."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from conftest import perfect_sae

import neuronlib
from neuronlib.paper import sae_baselines as sbl
from neuronlib.saes import TopKSAE

PROMPTS = {"a": ["the keys to the cabinet", "the key to the cabinet"], "b": ["the dogs near the boy are", "the dog"]}


def test_gate_passes_a_perfect_sae_and_fails_a_bad_one(tiny_llama):
    model = tiny_llama
    L, d = model.n_layers, model.d_model
    good = {s: [perfect_sae(d) for _ in range(L)] for s in ("mlp_out", "resid")}
    table = sbl.sae_quality(model, PROMPTS, saes=good)
    assert list(table.columns) == sbl.QUALITY_COLUMNS and len(table) == 2 * L
    n_rows = sum(len(model.tokenizer(p)["input_ids"]) for g in PROMPTS.values() for p in g)
    assert (table.n_rows == n_rows).all() and (table.n_prompts == 4).all()  # every real token, padding excluded
    assert (table.explained_variance > 1 - 1e-5).all() and table.passes.all()
    assert quality_ok(sbl.quality_gate(table))

    # an untrained SAE with few latents: far below the thresholds
    bad = {s: [TopKSAE(d, 2 * d, 2, seed=l) for l in range(L)] for s in ("mlp_out", "resid")}
    table = sbl.sae_quality(model, PROMPTS, saes=bad)
    assert (table.explained_variance < 0.8).all() and not table.passes.any()
    gate = sbl.quality_gate(table).set_index("site")
    assert not quality_ok(gate) and (gate.layers_failing == L).all()
    assert gate.loc["mlp_out", "threshold"] == 0.8 and gate.loc["resid", "threshold"] == 0.9

    # one bad layer is enough to fail its site, and only its site
    mixed = {"mlp_out": list(good["mlp_out"]), "resid": list(good["resid"])}
    mixed["resid"][1] = bad["resid"][1]
    gate = sbl.quality_gate(sbl.sae_quality(model, PROMPTS, saes=mixed)).set_index("site")
    assert gate.loc["mlp_out", "passes"] and not gate.loc["resid", "passes"]
    assert gate.loc["resid", "layers_failing"] == 1


def test_position_zero_is_counted_separately(tiny_llama):
    """EV without position 0 differs from EV with it when the SAE is imperfect; with a perfect SAE both are 1."""
    model = tiny_llama
    L, d = model.n_layers, model.d_model
    saes = {"resid": [TopKSAE(d, 4 * d, 8, seed=l) for l in range(L)]}
    t = sbl.sae_quality(model, PROMPTS, sites=("resid",), saes=saes)
    assert (t.explained_variance != t.explained_variance_no_pos0).all()


def quality_ok(gate) -> bool:
    return bool(gate.passes.all())


def _default_saes_present(model_name: str) -> bool:
    for s in sbl.SAE_SITES_TRAINED:
        path = sbl.sae_path(model_name, s, 0)
        if not (path / "cfg.json").exists():
            return False
        if sbl.load_cfg(path).get("train_config") != sbl.DEFAULT_CONFIG.as_dict():
            return False
    return True


@pytest.mark.real_model
def test_saved_baseline_saes_pass_the_quality_gate():
    """The real SAEs (smollm2-135m, DEFAULT_CONFIG) in the cache: every mlp_out SAE explains >= 0.8 and every resid
    SAE >= 0.9 of the variance of the SVA test prompts' activations, position 0 included."""
    name = neuronlib.DEFAULT_MODEL
    if not _default_saes_present(name):
        pytest.skip(f"the trained baseline SAEs for {name} (DEFAULT_CONFIG) are absent from the cache "
                    f"({sbl.sae_root()}); run notebook 01 or sae_baselines.train_sae_baselines to train them")
    model = neuronlib.load_model(name)
    table = sbl.sae_quality(model, sbl.sva_prompts(model))  # raises if any layer is missing
    assert len(table) == 2 * model.n_layers
    assert (table.d_sae == sbl.DEFAULT_CONFIG.expansion * model.d_model).all()
    failing = table[~table.passes][["site", "layer", "explained_variance", "threshold"]]
    assert failing.empty, f"SAEs below the quality gate:\n{failing}"
    assert (table.l0 <= sbl.DEFAULT_CONFIG.k).all()


def test_committed_gate_table_is_for_the_default_saes_and_passes():
    """results/sae_quality_gate.csv (written by notebook 01's full run) is for DEFAULT_CONFIG, has both sites with
    every layer, and every layer reaches its threshold; results/sae_quality.csv has the per-layer rows behind it."""
    import json
    from pathlib import Path

    import pandas as pd

    results = Path(__file__).resolve().parents[1] / "results"
    meta = json.loads((results / "sae_quality_gate.json").read_text())
    assert meta["parameters"] == sbl.DEFAULT_CONFIG.as_dict()
    gate = pd.read_csv(results / "sae_quality_gate.csv").set_index("site")
    per_layer = pd.read_csv(results / "sae_quality.csv")
    assert set(gate.index) == set(sbl.SAE_SITES_TRAINED)
    for site, r in gate.iterrows():
        rows = per_layer[per_layer.site == site]
        assert r.threshold == sbl.QUALITY_THRESHOLDS[site] and r.layers == len(rows) > 0
        assert r.ev_min == pytest.approx(rows.explained_variance.min())
        assert bool(r.passes) and r.layers_failing == 0 and (rows.explained_variance >= r.threshold).all()
