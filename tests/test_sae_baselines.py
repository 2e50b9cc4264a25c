"""Baseline SAEs (neuronlib.sae_baselines): corpus -> activations -> TopK SAEs per (site, layer) -> disk -> re-use."""
import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import pytest
import torch
from conftest import circuit_by_circuit, one_torch_thread, tiny_texts

import neuronlib
from neuronlib.paper import sae_baselines as sbl
from neuronlib.saes import load_cfg

REPO_ROOT = Path(__file__).resolve().parents[1]

CONFIG = sbl.SAETrainConfig(expansion=2, k=4, n_tokens=512, n_eval_tokens=128, epochs=4, batch_size=128, seq_len=16, lr=1e-2,
                            forward_batch=8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    with one_torch_thread():
        model = neuronlib.load_model("tiny-llama")
        root = tmp_path_factory.mktemp("saes")
        table = sbl.train_sae_baselines(model, config=CONFIG, root=root, texts=tiny_texts(), workers=1,
                                        progress=False, log=lambda *a: None)
        yield model, root, table


def test_token_windows_are_whole_windows_of_real_tokens(trained):
    model, _, _ = trained
    w = sbl.corpus_token_windows(model.tokenizer, 10, 16, texts=tiny_texts())
    assert w.shape == (10, 16)
    assert not (w == model.tokenizer.pad_token_id).any() and not (w == model.tokenizer.unk_token_id).any()
    with pytest.raises(ValueError, match="windows"):
        sbl.corpus_token_windows(model.tokenizer, 10_000, 16, texts=tiny_texts(5))


def test_table_has_one_row_per_site_and_layer(trained):
    model, root, table = trained
    assert list(table.columns) == sbl.TABLE_COLUMNS
    assert len(table) == 2 * model.n_layers
    assert sorted(zip(table.site, table.layer)) == sorted((s, l) for s in ("mlp_out", "resid") for l in range(model.n_layers))
    assert not table.reused.any()
    assert (table.d_sae == 2 * model.d_model).all() and (table.k == 4).all()
    assert table.explained_variance.between(-1, 1).all() and table.l0.between(0, 4).all()
    assert (table.n_eval_tokens == CONFIG.n_eval_windows * CONFIG.rows_per_window).all()
    # trained SAEs explain more variance of held-out activations than an untrained one
    assert table.explained_variance.mean() > 0.3, table[["site", "layer", "explained_variance"]]
    cfg = load_cfg(sbl.sae_path(model, "resid", 1, root))
    assert cfg["train_config"] == CONFIG.as_dict() and cfg["model_name"] == "tiny-llama"
    assert cfg["hook_name"] == "model.layers.1" and cfg["corpus"]["source"] == "texts given by the caller"
    assert not any(p.name.startswith("_activations") for p in (root / "tiny-llama").iterdir())  # activations deleted


def test_saved_saes_load_back_identically_and_are_reused(trained, monkeypatch):
    model, root, table = trained
    saes = sbl.load_sae_baselines(model, "sae_mlp_out", root=root, config=CONFIG)
    assert len(saes) == model.n_layers
    before = {(s, l): {k: v.clone() for k, v in sae.state_dict().items()}
              for s in ("mlp_out", "resid") for l, sae in enumerate(sbl.load_sae_baselines(model, s, root=root))}
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*.safetensors")}

    def no_training(*a, **k):
        raise AssertionError("a saved SAE with a matching config must be re-used, not retrained")

    monkeypatch.setattr(sbl, "train_topk_sae", no_training)
    again = sbl.train_sae_baselines(model, config=CONFIG, root=root, texts=tiny_texts(), workers=1, progress=False,
                                    log=lambda *a: None)
    assert again.reused.all() and again.attrs["n_trained"] == 0
    assert again.drop(columns="reused").equals(table.drop(columns="reused"))
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.safetensors")} == mtimes
    for s in ("mlp_out", "resid"):
        for l, sae in enumerate(sbl.load_sae_baselines(model, s, root=root)):
            for k, v in sae.state_dict().items():
                assert torch.equal(v, before[(s, l)][k])
    # the loaded SAE reconstructs exactly like the one that was trained: same held-out EV as in cfg.json
    with pytest.raises(ValueError, match="trained with"):
        sbl.load_sae_baselines(model, "resid", root=root, config=sbl.SAETrainConfig(**{**CONFIG.as_dict(), "k": 3,
                                                                                       "sources": None}))


def test_changed_config_or_data_retrains(trained, tmp_path):
    model, root, _ = trained
    # a different corpus gives different windows, hence a different key: nothing is re-used
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    table = sbl.train_sae_baselines(model, sites=("resid",), config=CONFIG, root=copy, texts=tiny_texts(seed=1),
                                    workers=1, progress=False, log=lambda *a: None)
    assert not table.reused.any()


def test_prompts_are_extra_rows_from_position_zero(trained, tmp_path):
    """Prompts are run one per sequence (grouped by token length, duplicates once) and added to the training rows;
    they enter the data hash, so SAEs trained without them are not re-used."""
    model, root, table = trained
    prompts = ["the keys to the cabinet", "the key to the cabinet", "the dog", "the dog"]
    blocks = sbl.prompt_blocks(model.tokenizer, prompts)
    lengths = [len(model.tokenizer(p)["input_ids"]) for p in dict.fromkeys(prompts)]
    assert sorted(b.shape[1] for b in blocks) == sorted(set(lengths))
    assert sum(b.numel() for b in blocks) == sum(lengths)
    assert torch.equal(blocks[0][0], torch.tensor(model.tokenizer(prompts[0])["input_ids"]))

    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    with_prompts = sbl.train_sae_baselines(model, sites=("resid",), config=CONFIG, root=copy, texts=tiny_texts(),
                                           prompts=prompts, workers=1, progress=False, log=lambda *a: None)
    assert not with_prompts.reused.any()
    corpus_rows = CONFIG.n_train_windows * CONFIG.rows_per_window
    assert (with_prompts.n_unique_tokens == corpus_rows + sum(lengths)).all()
    assert (table[table.site == "resid"].n_unique_tokens == corpus_rows).all()
    cfg = load_cfg(sbl.sae_path(model, "resid", 0, copy))
    assert cfg["corpus"]["n_prompts"] == 3 and cfg["corpus"]["n_prompt_tokens"] == sum(lengths)


def test_attach_makes_sae_sites_usable(trained):
    _, root, _ = trained
    model = neuronlib.load_model("tiny-llama")  # own copy: attaching changes the Model
    sbl.attach_sae_baselines(model, root=root)
    assert model.site_width("sae_resid") == 2 * model.d_model + 1
    pairs = [{"clean_prefix": "the keys to the cabinet", "patch_prefix": "the key to the cabinet",
              "clean_answer": " are", "patch_answer": " is"}]
    att = neuronlib.attribute(model, pairs, method="relp", sites=("sae_mlp_out", "sae_resid"))
    assert att["sae_resid"].shape[-1] == 2 * model.d_model + 1
    assert torch.isfinite(att["sae_resid"]).all()


def test_attaching_again_keeps_the_loaded_saes_unless_the_files_changed(trained, tmp_path):
    _, root, _ = trained
    model = neuronlib.load_model("tiny-llama")
    sbl.attach_sae_baselines(model, ("resid",), root=root)
    first = model.saes["sae_resid"]
    sbl.attach_sae_baselines(model, ("resid",), root=root, config=CONFIG)
    assert model.saes["sae_resid"] is first  # same training keys: nothing loaded again
    other = tmp_path / "saes"
    shutil.copytree(root, other)
    cfg_file = sbl.sae_path(model.name, "resid", 1, other) / "cfg.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["train_key"] = "retrained"
    cfg_file.write_text(json.dumps(cfg))
    from neuronlib.models import _write_manifest

    _write_manifest(cfg_file.parent)  # as save_sae writes it with a retrained SAE
    sbl.attach_sae_baselines(model, ("resid",), root=other)
    assert model.saes["sae_resid"] is not first  # a layer's SAE changed on disk: all reloaded
    assert model.saes["sae_resid"][1].cfg["train_key"] == "retrained"


def test_missing_saes_name_the_layer(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_sae_baselines"):
        sbl.load_sae_baselines("tiny-llama", "mlp_out", root=tmp_path)


def test_notebook_01_has_tagged_parameters_cell():
    nb = json.loads((REPO_ROOT / "notebooks" / "01_sparsity_comparison.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", [])
    src = "".join(code[0]["source"])
    assert 'MODEL = "smollm2-135m"' in src and "SMOKE = False" in src
    # the SAE settings it trains with are the package defaults that tests/test_sae_quality.py checks
    assert f"SAE_TOKENS = {sbl.DEFAULT_CONFIG.n_tokens:_}" in src and f"SAE_EPOCHS = {sbl.DEFAULT_CONFIG.epochs}" in src
    assert f"SAE_OUTLIER_CAP = {sbl.DEFAULT_CONFIG.outlier_cap}" in src and "SAE_PROMPTS = True" in src


def test_sae_circuits_batched_sweep_equals_one_ablation_per_circuit(trained):
    """evaluate_circuit on an SAE basis (latents + error nodes) equals ablating each circuit on its own."""
    _, root, _ = trained
    model = neuronlib.load_model("tiny-llama")
    sbl.attach_sae_baselines(model, root=root)
    pairs = [{"clean_prefix": "the keys to the cabinet", "patch_prefix": "the key to the cabinet",
              "clean_answer": " are", "patch_answer": " is"},
             {"clean_prefix": "the dogs near the boy", "patch_prefix": "the dog near the boy",
              "clean_answer": " have", "patch_answer": " has"}]
    scores = neuronlib.attribute(model, pairs, method="relp", sites=("sae_mlp_out",))
    sizes = [0, 1, 5, 40, 10**9]
    for mode in ("mean", "zero"):
        ours = neuronlib.evaluate_circuit(model, scores, pairs, sizes=sizes, mode=mode, sites=("sae_mlp_out",),
                                          batch_size=3).set_index("size")
        ref = circuit_by_circuit(model, scores, pairs, "sae_mlp_out", sizes, mode)
        for size, (m_c, m_cbar) in ref.items():
            assert abs(ours.loc[size, "m_C"] - m_c) <= 1e-4 and abs(ours.loc[size, "m_Cbar"] - m_cbar) <= 1e-4
        assert abs(ours.faithfulness.iloc[-1] - 1) <= 1e-5  # the full basis


@pytest.mark.parametrize("config", [sbl.SMOKE_CONFIG, sbl.DEFAULT_CONFIG])
def test_heldout_corpus_is_disjoint_from_the_training_corpus(tiny_llama, config):
    """The held-out chunks are none of the chunks the training windows were cut from: the training (and training
    evaluation) windows come out the same when only the other chunks are read."""
    from neuronlib.data.corpus import iter_corpus_texts

    tok = tiny_llama.tokenizer
    texts = list(iter_corpus_texts(seed=config.corpus_seed, sources=config.sources))
    held = sbl.heldout_corpus_texts(tok, config)
    held_set = set(held)
    rest = [t for t in texts if t not in held_set]
    assert held and rest and len(held) + len(rest) <= len(texts)
    n = config.n_train_windows + config.n_eval_windows
    trained_on = sbl.corpus_token_windows(tok, n, config.seq_len, seed=config.corpus_seed, sources=config.sources)
    assert torch.equal(sbl.corpus_token_windows(tok, n, config.seq_len, texts=rest), trained_on)
    assert len(held) >= 0.9 * len(texts)  # training read a small prefix of the shuffled chunks
    windows = sbl.heldout_token_windows(tok, 1000, seq_len=64, config=config)
    assert windows.shape == (16, 64)
    assert torch.equal(windows, sbl.corpus_token_windows(tok, 16, 64, texts=held))
