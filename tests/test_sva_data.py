import json
import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from neuronlib.data.sva import (  # noqa: E402
    ALL_SUBJECTS,
    ANSWER_PAIRS,
    EXTRA_SUBJECTS,
    MIN_TEST_PREFIXES,
    PP_NOUNS,
    PREPOSITIONS,
    RC_NOUNS,
    RC_VERBS,
    REQUIRED_KEYS,
    SPLIT_RULES,
    SUBJECTS,
    TEMPLATES,
    generate_sva,
    load_sva,
    split_directory,
    write_sva_files,
)

REPO = Path(__file__).resolve().parents[1]
SINGULAR_ANSWERS = {sg for sg, _ in ANSWER_PAIRS}
PLURAL_ANSWERS = {pl for _, pl in ANSWER_PAIRS}


@pytest.fixture(scope="module")
def tok(smollm):
    """The SmolLM2 tokenizer, from the session's default model (its safetensors cache)."""
    return smollm.tokenizer


def n_tokens(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


# ----------------------------------------------------------------------------- generator


@pytest.mark.parametrize("template", TEMPLATES)
def test_generator_is_deterministic_in_seed(template):
    a = generate_sva(template, 50, seed=0)
    assert a == generate_sva(template, 50, seed=0)
    assert a != generate_sva(template, 50, seed=1)
    assert len({json.dumps(r, sort_keys=True) for r in a}) == 50  # distinct records


def test_vocabulary_sizes():
    # At least 20 singular/plural pairs per noun role, as the benchmark description asks.
    for nouns in (SUBJECTS, PP_NOUNS, RC_NOUNS):
        assert len(nouns) >= 20 and len(set(nouns)) == len(nouns)
    assert len(RC_VERBS) >= 10 and len(PREPOSITIONS) >= 3
    assert not {w for p in SUBJECTS for w in p} & {w for p in RC_NOUNS for w in p}
    extra = {w for p in EXTRA_SUBJECTS for w in p}
    assert len(set(EXTRA_SUBJECTS)) == len(EXTRA_SUBJECTS)
    assert not extra & {w for p in SUBJECTS + RC_NOUNS + PP_NOUNS for w in p}


def test_unknown_template_and_too_many():
    with pytest.raises(ValueError, match="template"):
        generate_sva("passive", 3)
    with pytest.raises(ValueError, match="available"):
        generate_sva("simple", 10**6)


SG = {sg for sg, _ in ALL_SUBJECTS + RC_NOUNS + PP_NOUNS}
PL = {pl for _, pl in ALL_SUBJECTS + RC_NOUNS + PP_NOUNS}
FLIP = {**dict(ALL_SUBJECTS), **dict(RC_NOUNS), **{pl: sg for sg, pl in ALL_SUBJECTS + RC_NOUNS}}


def number(noun):
    assert (noun in SG) != (noun in PL), noun
    return "singular" if noun in SG else "plural"


# Word index of the noun the verb agrees with, per template.
AGREE_POS = {"simple": 1, "nounpp": 1, "rc": 1, "within_rc": 4}


@pytest.mark.parametrize("template", TEMPLATES)
def test_grammar_of_each_template(template):
    for r in generate_sva(template, 400, seed=3):
        assert tuple(r) == REQUIRED_KEYS
        clean, patch = r["clean_prefix"].split(), r["patch_prefix"].split()
        assert clean[0] == "The" and len(clean) == len(patch)
        assert len(clean) == {"simple": 2, "nounpp": 5, "rc": 6, "within_rc": 5}[template]
        # The patch flips exactly the agreeing noun, to its other number.
        k = AGREE_POS[template]
        diff = [i for i, (a, b) in enumerate(zip(clean, patch)) if a != b]
        assert diff == [k]
        assert FLIP[clean[k]] == patch[k]
        assert number(clean[k]) != number(patch[k])
        # The answers are the two forms of one verb pair, each agreeing with its prefix's noun.
        pair = (r["clean_answer"], r["patch_answer"])
        assert pair in ANSWER_PAIRS or pair[::-1] in ANSWER_PAIRS
        expected = SINGULAR_ANSWERS if number(clean[k]) == "singular" else PLURAL_ANSWERS
        assert r["clean_answer"] in expected
        nouns = [w for w in clean if w in SG or w in PL]
        assert r["case"] == "_".join(number(w) for w in nouns)
        if template == "nounpp":
            assert clean[2] in PREPOSITIONS and clean[3] == "the"
        if template in ("rc", "within_rc"):
            assert clean[2:4] == ["that", "the"]
        if template == "rc":
            # The embedded verb agrees with the embedded noun, in clean and patch alike:
            # plural noun (ends in -s) <-> bare verb; singular noun <-> verb in -s.
            noun, verb = clean[4], clean[5]
            assert clean[4:] == patch[4:]
            assert noun.endswith("s") != verb.endswith("s"), r
            assert verb in {v[0] if number(noun) == "singular" else v[1] for v in RC_VERBS}


def test_generator_mixes_numbers_and_answer_pairs():
    recs = generate_sva("nounpp", 400, seed=0)
    assert {r["case"] for r in recs} == {"singular_singular", "singular_plural",
                                         "plural_singular", "plural_plural"}
    assert {r["clean_answer"] for r in recs} == SINGULAR_ANSWERS | PLURAL_ANSWERS


# ----------------------------------------------------------------------------- written files


@pytest.mark.parametrize("split_rule", SPLIT_RULES)
def test_committed_files_are_regenerated_exactly(tok, tmp_path, split_rule):
    summary = write_sva_files(tmp_path, tokenizer=tok, split_rule=split_rule)
    folder = REPO / "data" / split_directory(split_rule)
    for t in TEMPLATES:
        assert summary[t]["n_train"] == 300 and summary[t]["n_test"] == 40
        for split in ("train", "test"):
            name = f"{t}_{split}.jsonl"
            assert (tmp_path / name).read_text() == (folder / name).read_text(), name


def read_jsonl(path):
    return [json.loads(line) for line in open(path)]


def skeleton(template, prefix):
    """The sentence without the numbers of its nouns (and without the embedded verb's agreement in rc)."""
    words = prefix.split()
    lemma = {**{pl: sg for sg, pl in ALL_SUBJECTS + RC_NOUNS + PP_NOUNS}, **{pl: sg for sg, pl in RC_VERBS}}
    return (template, tuple(lemma.get(w, w) for w in words))


@pytest.mark.parametrize("template", TEMPLATES)
def test_prefix_rule_test_splits_hold_distinct_prefixes_disjoint_from_train(template):
    folder = REPO / "data" / split_directory("prefixes")
    train, test = (read_jsonl(folder / f"{template}_{s}.jsonl") for s in ("train", "test"))
    assert len(test) == 40 and len(train) == 300
    test_prefixes = {r["clean_prefix"] for r in test}
    assert len(test_prefixes) == len(test) >= MIN_TEST_PREFIXES  # one pair per clean prefix
    # disjoint by clean prefix, by any prefix, and by sentence skeleton (no number-flipped copy across splits)
    assert not test_prefixes & {r["clean_prefix"] for r in train}
    every = {r[k] for r in train for k in ("clean_prefix", "patch_prefix")}
    assert not every & {r[k] for r in test for k in ("clean_prefix", "patch_prefix")}
    assert not ({skeleton(template, r["clean_prefix"]) for r in train}
                & {skeleton(template, r["clean_prefix"]) for r in test})


def test_skeleton_rule_files_are_the_first_runs_clustered_splits():
    """The old rule's test splits repeat prefixes (why the bootstrap resamples clean prefixes)."""
    folder = REPO / "data" / split_directory("skeleton")
    distinct = {t: len({r["clean_prefix"] for r in read_jsonl(folder / f"{t}_test.jsonl")}) for t in TEMPLATES}
    assert distinct["simple"] == 10 and distinct["within_rc"] == 20
    assert split_directory("skeleton") == "sva" and split_directory() == "sva_prefixes"


def test_prefix_rule_without_tokenizer_and_its_errors(tmp_path):
    summary = write_sva_files(tmp_path, n_train=50, n_test=30)
    for t in TEMPLATES:
        test = read_jsonl(tmp_path / f"{t}_test.jsonl")
        assert summary[t]["test_prefixes"] == len({r["clean_prefix"] for r in test}) == 30
    with pytest.raises(ValueError, match="distinct clean prefixes"):
        write_sva_files(tmp_path, n_train=50, n_test=20)
    # a smoke run may lower the floor explicitly (as seed_headlines does below 30 test pairs)
    smoke = write_sva_files(tmp_path, n_train=20, n_test=6, min_test_prefixes=6)
    assert all(v["test_prefixes"] == 6 for v in smoke.values())
    # the skeleton rule accepts it (and repeats prefixes)
    small = write_sva_files(tmp_path, n_train=50, n_test=20, split_rule="skeleton")
    assert small["simple"]["test_prefixes"] < 20
    with pytest.raises(ValueError, match="split rule"):
        write_sva_files(tmp_path, split_rule="random")


def test_load_templates_picks_the_rule_s_files(smollm):
    from neuronlib.paper import sva as sb

    new = sb.load_templates(smollm, n_train=300, n_test=40)
    old = sb.load_templates(smollm, n_train=300, n_test=40, split_rule="skeleton")
    table = sb.data_table(smollm, new).set_index("template")
    assert (table.test_prefixes == 40).all()
    assert sb.data_table(smollm, old).set_index("template").loc["simple", "test_prefixes"] == 10
    assert {r["clean_prefix"] for r in old["simple"].test} != {r["clean_prefix"] for r in new["simple"].test}


@pytest.mark.parametrize("template", TEMPLATES)
def test_committed_files_align_under_smollm2(tok, template):
    assert tok("The")["input_ids"] == tok("The", add_special_tokens=False)["input_ids"]  # no BOS
    splits = {}
    for split, n in (("train", 300), ("test", 40)):
        rows = [json.loads(line) for line in open(REPO / "data" / "sva" / f"{template}_{split}.jsonl")]
        assert len(rows) == n
        assert all(tuple(r) == REQUIRED_KEYS for r in rows)
        lengths = {n_tokens(tok, r[k]) for r in rows for k in ("clean_prefix", "patch_prefix")}
        assert len(lengths) == 1, lengths
        assert all(n_tokens(tok, r[k]) == 1 for r in rows for k in ("clean_answer", "patch_answer"))
        splits[split] = (rows, lengths.pop())
    assert splits["train"][1] == splits["test"][1]
    train_prefixes = {r[k] for r in splits["train"][0] for k in ("clean_prefix", "patch_prefix")}
    assert not train_prefixes & {r[k] for r in splits["test"][0] for k in ("clean_prefix", "patch_prefix")}
    # The loader keeps every row of our own files.
    loaded = load_sva(template, tokenizer=tok, split="test")
    assert len(loaded) == 40 and sum(loaded.dropped.values()) == 0
    assert loaded.length == splits["test"][1]


def test_generate_with_tokenizer_fixes_one_length(tok):
    recs = generate_sva("nounpp", 100, seed=5, tokenizer=tok)
    assert len(recs) == 100
    # SUBJECTS includes words like "uncle"/"uncles" whose two forms differ in length; none survive.
    assert {n_tokens(tok, r[k]) for r in recs for k in ("clean_prefix", "patch_prefix")} == {5}
    assert n_tokens(tok, " uncle") != n_tokens(tok, " uncles")
    assert not any("uncle" in r["clean_prefix"] for r in recs)


# ----------------------------------------------------------------------------- loader


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def row(clean, patch, ca, pa, case="x", **extra):
    return {"clean_prefix": clean, "patch_prefix": patch, "clean_answer": ca, "patch_answer": pa,
            "case": case, **extra}


def test_loader_drops_rows_with_reasons(tok, tmp_path, caplog):
    # Preconditions on the tokenizer that the hand-made file relies on.
    assert n_tokens(tok, " is not") == 2
    assert n_tokens(tok, "The uncle") != n_tokens(tok, "The uncles")
    assert n_tokens(tok, "The friends") == 2 and n_tokens(tok, "The dogs near the tree") == 5
    rows = [
        row("The friends", "The friend", " have", " has", "plural", extra_key=[1, 2]),
        row("The dog", "The dogs", " is", " are", "singular"),
        row("The cats", "The cat", " go", " goes", "plural"),
        row("The kings", "The king", " is not", " is", "plural"),       # multi-token answer
        row("The uncle", "The uncles", " is", " are", "singular"),      # unequal prefix lengths
        row("The dogs near the tree", "The dog near the tree", " do", " does", "plural_singular"),
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        loaded = load_sva(path, tokenizer=tok)
    assert loaded.dropped == {"multi_token_answer": 1, "unequal_prefix_length": 1, "other_length": 1}
    assert loaded.length == 2 and loaded.n_rows_file == 6
    ds = loaded.dataset
    assert ds["clean_prefix"] == ["The friends", "The dog", "The cats"]
    assert {"clean_prefix", "patch_prefix", "clean_answer", "patch_answer", "case",
            "clean_answer_id", "patch_answer_id"} <= set(ds.column_names)
    assert ds["clean_answer_id"][0] == tok(" have", add_special_tokens=False)["input_ids"][0]
    assert ds["patch_answer_id"][1] == tok(" are", add_special_tokens=False)["input_ids"][0]
    assert "dropped 3 of 6" in caplog.text

    assert len(load_sva(path, tokenizer=tok, n=2)) == 2
    # By template name from another directory.
    write_jsonl(tmp_path / "simple_test.jsonl", rows[:3])
    assert len(load_sva("simple", tokenizer=tok, split="test", data_dir=tmp_path)) == 3


def test_loader_errors(tok, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no SVA records"):
        load_sva(empty, tokenizer=tok)
    unusable = write_jsonl(tmp_path / "unusable.jsonl", [
        row("The kings", "The king", " is not", " is"),
        row("The uncle", "The uncles", " is", " are"),
    ])
    with pytest.raises(ValueError, match="no usable rows"):
        load_sva(unusable, tokenizer=tok)
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"clean_prefix": "The dog", "clean_answer": " is"}) + "\n")
    with pytest.raises(ValueError, match="patch_prefix"):
        load_sva(missing, tokenizer=tok)
    with pytest.raises(FileNotFoundError):
        load_sva("simple", tokenizer=tok, data_dir=tmp_path)
