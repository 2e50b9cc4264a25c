"""Answers to the three exercises of notebooks/00_quickstart.ipynb.

Run all three on the default model:  python notebooks/00_quickstart_answers.py  [MODEL]
Each answer is a function of the model (and data), so tests/test_quickstart.py can run them on a tiny model too.
"""
from __future__ import annotations

import random
import sys

import numpy as np
import pandas as pd

import neuronlib
from neuronlib import Node
from neuronlib.data.sva import load_sva
from neuronlib.describe import describe
from neuronlib.stats import bootstrap_ratio

PAIR = {"clean_prefix": "The keys to the cabinet", "clean_answer": " are",
        "patch_prefix": "The key to the cabinet", "patch_answer": " is"}


# Exercise 1 ------------------------------------------------------------------------------------------------------
# "The circuit in step 4 was chosen and evaluated on the same prompt. Choose it on training pairs of the `nounpp`
#  template and measure faithfulness and completeness on held-out pairs. Does it still look like a circuit?"

def sva_pairs(model, template: str = "nounpp", n_train: int = 8, n_test: int = 8) -> tuple[list, list]:
    """Training and held-out pairs of one template (one tokenised length, so positions align)."""
    train = load_sva(template, tokenizer=model.tokenizer, split="train", n=n_train).dataset.to_list()
    test = load_sva(template, tokenizer=model.tokenizer, split="test", n=n_test).dataset.to_list()
    return train, test


def exercise_1(model, train, test, sizes=(10, 20, 50, 200)) -> pd.DataFrame:
    """Select on ``train`` (RelP scores averaged over the pairs), evaluate on ``test`` under mean ablation.

    Pooled ratios with 95% bootstrap intervals over the held-out pairs."""
    att = neuronlib.attribute(model, train, method="relp")
    frame = neuronlib.evaluate_circuit(model, att, test, sizes=list(sizes), mode="mean", per_example=True)
    out = frame[["size"]].reset_index(drop=True)
    den = np.stack(frame["m_M_ex"]) - np.stack(frame["m_empty_ex"])
    for name, col in (("faithfulness", "m_C_ex"), ("completeness", "m_Cbar_ex")):
        ratio = bootstrap_ratio(np.stack(frame[col]) - np.stack(frame["m_empty_ex"]), den)
        out[name], out[f"{name}_lo"], out[f"{name}_hi"] = ratio["estimate"], ratio["lo"], ratio["hi"]
    return out


# Exercise 2 ------------------------------------------------------------------------------------------------------
# "A neuron has two sides. Which side of each of the top 5 neurons is active on the prompt, and what does *that*
#  side promote? (The edge graph's `nodes` table has each neuron's activation `value` and `sign`.)"

def exercise_2(model, pair=PAIR, n: int = 5) -> pd.DataFrame:
    graph = neuronlib.attribute_edges(model, [pair], k=n, embeddings=False)
    nodes = graph.nodes[graph.nodes["kind"] == "neuron"]
    signed = list(zip(nodes["layer"], nodes["unit"], nodes["sign"]))
    desc = describe(model, signed, k=5)
    out = desc[["label", "promotes"]].copy()
    out["position"] = nodes["position"].to_numpy()
    out["activation"] = nodes["value"].to_numpy()
    out["score"] = nodes["score"].to_numpy()
    return out


# Exercise 3 ------------------------------------------------------------------------------------------------------
# "Step 5 amplified the top neuron, which works *against* ' are'. Steer the neurons that *support* ' are' (positive
#  score) instead, and a same-size control of random neurons at the same positions. Which way does p(' are') move?"

def exercise_3(model, pair=PAIR, n: int = 5, multipliers=(0.0, 1.0, 4.0), seed: int = 0) -> pd.DataFrame:
    att = neuronlib.attribute(model, [pair], method="relp")
    top = att.top(50)
    support = [Node("mlp_acts", int(r.layer), int(r.position), int(r.unit))
               for r in top[top["score"] > 0].head(n).itertuples()]
    rng = random.Random(seed)
    control = [Node("mlp_acts", rng.randrange(model.n_layers), node.position, rng.randrange(model.d_mlp))
               for node in support]
    rows = []
    for name, nodes in (("supporting neurons", support), ("random control", control)):
        for k in multipliers:
            run = neuronlib.steer(model, [pair["clean_prefix"]], nodes, multiplier=k, positions="circuit")
            frame = run.to_frame([pair["clean_answer"], pair["patch_answer"]])
            rows.append({"neurons": name, "multiplier": k, **frame.iloc[0].drop("example").to_dict()})
    return pd.DataFrame(rows)


def main(model_name: str = neuronlib.DEFAULT_MODEL) -> dict[str, pd.DataFrame]:
    model = neuronlib.load_model(model_name)
    train, test = sva_pairs(model)
    answers = {"exercise 1": exercise_1(model, train, test), "exercise 2": exercise_2(model),
               "exercise 3": exercise_3(model)}
    for name, frame in answers.items():
        print(f"\n{name}\n{frame.to_string()}")
    return answers


if __name__ == "__main__":
    main(*sys.argv[1:2])
