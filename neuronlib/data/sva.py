"""Subject–verb agreement (SVA) benchmark: generator, writer and loader.

Four templates after Finlayson et al. (2021) as used by Marks et al. (2025); docs/method.md §5:

=============  ==========================================  ==============================================
template       clean prefix (example)                      the verb agrees with
=============  ==========================================  ==============================================
``simple``     ``The friends``                              the subject
``nounpp``     ``The authors behind the dogs``              the subject (not the distractor in the PP)
``rc``         ``The athlete that the managers like``       the head noun (main verb, after the clause)
``within_rc``  ``The athlete that the chefs``               the noun inside the relative clause
=============  ==========================================  ==============================================

The patch prefix flips the grammatical number of exactly the noun the verb must agree with, so
``clean_answer`` and ``patch_answer`` are the two forms of one verb pair (`` is``/`` are``,
`` has``/`` have``, `` does``/`` do``, `` goes``/`` go``).

Records use the community JSON-lines format
``{"clean_prefix", "patch_prefix", "clean_answer", "patch_answer", "case"}``; ``case`` names the
numbers of the nouns of the *clean* prefix in sentence order (``"plural"`` for simple,
``"plural_singular"`` = subject plural, distractor singular for nounpp, head_embedded for rc/within_rc).

The vocabularies are our own. They are tokenizer-independent on purpose; a tokenizer is applied
afterwards as a filter (equal clean/patch length, one length per template, single-token answers),
so positions align across a template's examples.

Two split rules (:data:`SPLIT_RULES`) turn a template's records into train and test files; both keep train and
test disjoint by sentence skeleton (the lemmas, ignoring numbers and the answer pair), hence by clean and patch
prefix:

* ``"prefixes"`` (the default): the test split takes **one record per distinct clean prefix**, so its ``n_test``
  pairs come from ``n_test`` distinct clean prefixes (at least :data:`MIN_TEST_PREFIXES`, else an error). A
  bootstrap over test pairs then resamples independent sentences. Records are drawn from the grown subject
  vocabulary ``SUBJECTS + EXTRA_SUBJECTS`` (the ``simple`` template has too few skeletons otherwise).
* ``"skeleton"``: the rule of the first committed run (``data/sva``): whole skeleton groups go to the test split,
  so one clean prefix can carry up to four pairs (its four answer pairs; ``simple`` had 10 distinct prefixes in
  40 pairs), from the original vocabulary ``SUBJECTS``. Kept so that run stays reproducible.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import packaged

logger = logging.getLogger(__name__)

TEMPLATES = ("simple", "nounpp", "rc", "within_rc")
REQUIRED_KEYS = ("clean_prefix", "patch_prefix", "clean_answer", "patch_answer", "case")

# (singular, plural) answer verbs; leading space because they follow a word.
ANSWER_PAIRS: tuple[tuple[str, str], ...] = (
    (" is", " are"),
    (" has", " have"),
    (" does", " do"),
    (" goes", " go"),
)

# Subjects / head nouns (animate, so every template reads naturally). A few have plurals that
# some tokenizers split (uncle, aunt, mayor, ...): kept on purpose, the tokenizer filter drops them.
SUBJECTS: tuple[tuple[str, str], ...] = (
    ("author", "authors"), ("pilot", "pilots"), ("surgeon", "surgeons"), ("farmer", "farmers"),
    ("customer", "customers"), ("officer", "officers"), ("teacher", "teachers"),
    ("senator", "senators"), ("consultant", "consultants"), ("dancer", "dancers"),
    ("doctor", "doctors"), ("lawyer", "lawyers"), ("student", "students"), ("friend", "friends"),
    ("athlete", "athletes"), ("writer", "writers"), ("painter", "painters"), ("singer", "singers"),
    ("driver", "drivers"), ("nurse", "nurses"), ("judge", "judges"), ("king", "kings"),
    ("queen", "queens"), ("soldier", "soldiers"), ("child", "children"), ("man", "men"),
    ("woman", "women"), ("neighbor", "neighbors"), ("guest", "guests"), ("player", "players"),
    ("artist", "artists"), ("builder", "builders"), ("clerk", "clerks"), ("minister", "ministers"),
    ("parent", "parents"), ("engineer", "engineers"), ("actor", "actors"), ("editor", "editors"),
    ("poet", "poets"), ("scientist", "scientists"), ("professor", "professors"),
    ("director", "directors"), ("worker", "workers"), ("visitor", "visitors"),
    ("leader", "leaders"), ("girl", "girls"), ("boy", "boys"), ("brother", "brothers"),
    ("sister", "sisters"), ("cousin", "cousins"), ("tourist", "tourists"), ("baby", "babies"),
    ("uncle", "uncles"), ("aunt", "aunts"), ("mayor", "mayors"), ("baker", "bakers"),
)

# Distractor nouns inside the prepositional phrase (nounpp): objects, places and animals.
PP_NOUNS: tuple[tuple[str, str], ...] = (
    ("dog", "dogs"), ("car", "cars"), ("table", "tables"), ("tree", "trees"), ("house", "houses"),
    ("door", "doors"), ("window", "windows"), ("desk", "desks"), ("book", "books"),
    ("bridge", "bridges"), ("garden", "gardens"), ("tower", "towers"), ("river", "rivers"),
    ("building", "buildings"), ("wall", "walls"), ("fence", "fences"), ("cabinet", "cabinets"),
    ("shelf", "shelves"), ("box", "boxes"), ("church", "churches"), ("bus", "buses"),
    ("horse", "horses"), ("cat", "cats"), ("truck", "trucks"), ("office", "offices"),
    ("school", "schools"), ("farm", "farms"), ("lake", "lakes"), ("station", "stations"),
    ("hotel", "hotels"), ("park", "parks"), ("shop", "shops"), ("museum", "museums"),
    ("statue", "statues"), ("boat", "boats"),
)

PREPOSITIONS: tuple[str, ...] = ("near", "behind", "beside", "by", "outside", "with")

# Nouns inside the relative clause. Disjoint from SUBJECTS so a sentence never repeats a lemma
# ("The chef that the chefs like").
RC_NOUNS: tuple[tuple[str, str], ...] = (
    ("manager", "managers"), ("chef", "chefs"), ("reporter", "reporters"),
    ("musician", "musicians"), ("coach", "coaches"), ("captain", "captains"),
    ("priest", "priests"), ("guard", "guards"), ("client", "clients"), ("patient", "patients"),
    ("owner", "owners"), ("member", "members"), ("prince", "princes"), ("lady", "ladies"),
    ("designer", "designers"), ("architect", "architects"), ("tenant", "tenants"),
    ("sailor", "sailors"), ("hunter", "hunters"), ("dentist", "dentists"),
    ("mechanic", "mechanics"), ("cook", "cooks"), ("expert", "experts"),
    ("official", "officials"), ("trainer", "trainers"), ("stranger", "strangers"),
)

# Transitive verbs of the relative clause in rc, as (agrees with singular, agrees with plural):
# "that the manager likes" / "that the managers like".
RC_VERBS: tuple[tuple[str, str], ...] = (
    ("likes", "like"), ("loves", "love"), ("knows", "know"), ("sees", "see"), ("meets", "meet"),
    ("helps", "help"), ("trusts", "trust"), ("calls", "call"), ("watches", "watch"),
    ("avoids", "avoid"), ("follows", "follow"), ("praises", "praise"), ("visits", "visit"),
    ("thanks", "thank"), ("remembers", "remember"), ("respects", "respect"), ("admires", "admire"),
    ("hates", "hate"), ("hires", "hire"), ("blames", "blame"),
)

# More subjects, used by the "prefixes" split rule only (the "skeleton" rule regenerates the first committed files,
# which were drawn from SUBJECTS alone). Both forms are one token after a space under SmolLM2, so the simple
# template gains a skeleton per pair: 52 usable subjects cannot give 20 test skeletons (40 distinct clean
# prefixes) plus 300 training pairs (38 skeletons of 8 records).
EXTRA_SUBJECTS: tuple[tuple[str, str], ...] = (
    ("pupil", "pupils"), ("hero", "heroes"), ("agent", "agents"), ("host", "hosts"), ("monk", "monks"),
    ("nun", "nuns"), ("knight", "knights"), ("thief", "thieves"), ("voter", "voters"),
    ("citizen", "citizens"), ("partner", "partners"), ("runner", "runners"), ("swimmer", "swimmers"),
    ("buyer", "buyers"), ("seller", "sellers"), ("researcher", "researchers"),
    ("volunteer", "volunteers"), ("resident", "residents"), ("husband", "husbands"), ("wife", "wives"),
    ("traveler", "travelers"), ("scholar", "scholars"), ("reader", "readers"), ("governor", "governors"),
)
ALL_SUBJECTS = SUBJECTS + EXTRA_SUBJECTS

NUMBERS = ("singular", "plural")

SPLIT_RULES = ("prefixes", "skeleton")
DEFAULT_SPLIT_RULE = "prefixes"
# The fewest distinct clean prefixes a test split may hold under the "prefixes" rule: the bootstrap's independent
# unit is the clean prefix, and 30 is the least we accept for its percentile intervals.
MIN_TEST_PREFIXES = 30


def _check_rule(split_rule: str) -> None:
    if split_rule not in SPLIT_RULES:
        raise ValueError(f"unknown split rule {split_rule!r}; expected one of {SPLIT_RULES}")


def rule_subjects(split_rule: str) -> tuple[tuple[str, str], ...]:
    """The subject vocabulary a split rule draws from (see the module docstring)."""
    _check_rule(split_rule)
    return SUBJECTS if split_rule == "skeleton" else ALL_SUBJECTS


def _dims(template: str, n_subjects: int) -> tuple[int, ...]:
    """Mixed-radix dimensions of a template's combination space; a record is one index into it."""
    return {
        # subject, subject number, answer pair
        "simple": (n_subjects, 2, len(ANSWER_PAIRS)),
        # subject, subject number, preposition, distractor, distractor number, answer pair
        "nounpp": (n_subjects, 2, len(PREPOSITIONS), len(PP_NOUNS), 2, len(ANSWER_PAIRS)),
        # head, head number, rc noun, rc noun number, rc verb, answer pair
        "rc": (n_subjects, 2, len(RC_NOUNS), 2, len(RC_VERBS), len(ANSWER_PAIRS)),
        # head, head number, rc noun, rc noun number, answer pair
        "within_rc": (n_subjects, 2, len(RC_NOUNS), 2, len(ANSWER_PAIRS)),
    }[template]


def _check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise ValueError(f"unknown SVA template {template!r}; expected one of {TEMPLATES}")


def _decode(index: int, dims: Sequence[int]) -> list[int]:
    digits = []
    for d in reversed(dims):
        index, r = divmod(index, d)
        digits.append(r)
    return digits[::-1]


def _build(template: str, digits: Sequence[int], subjects=SUBJECTS) -> tuple[tuple, dict]:
    """One combination -> (group key, record). The group key is the sentence without its
    grammatical numbers and answer pair; train/test are split by it, so no test sentence is a
    number-flipped or re-answered copy of a training sentence."""
    if template == "simple":
        s, sn, a = digits
        clean = f"The {subjects[s][sn]}"
        patch = f"The {subjects[s][1 - sn]}"
        agree, case, key = sn, NUMBERS[sn], (s,)
    elif template == "nounpp":
        s, sn, p, d, dn, a = digits
        pp = f" {PREPOSITIONS[p]} the {PP_NOUNS[d][dn]}"
        clean = f"The {subjects[s][sn]}{pp}"
        patch = f"The {subjects[s][1 - sn]}{pp}"
        agree, case, key = sn, f"{NUMBERS[sn]}_{NUMBERS[dn]}", (s, p, d)
    elif template == "rc":
        h, hn, r, rn, v, a = digits
        # The embedded verb agrees with the embedded noun, which the patch leaves alone.
        clause = f" that the {RC_NOUNS[r][rn]} {RC_VERBS[v][rn]}"
        clean = f"The {subjects[h][hn]}{clause}"
        patch = f"The {subjects[h][1 - hn]}{clause}"
        agree, case, key = hn, f"{NUMBERS[hn]}_{NUMBERS[rn]}", (h, r, v)
    elif template == "within_rc":
        h, hn, r, rn, a = digits
        head = f"The {subjects[h][hn]} that the "
        clean = head + RC_NOUNS[r][rn]
        patch = head + RC_NOUNS[r][1 - rn]
        agree, case, key = rn, f"{NUMBERS[hn]}_{NUMBERS[rn]}", (h, r)
    else:  # pragma: no cover - guarded by _check_template
        raise AssertionError(template)
    record = {
        "clean_prefix": clean,
        "patch_prefix": patch,
        "clean_answer": ANSWER_PAIRS[a][agree],
        "patch_answer": ANSWER_PAIRS[a][1 - agree],
        "case": case,
    }
    return key, record


def _stream(template: str, seed: int, subjects=SUBJECTS) -> Iterator[tuple[tuple, dict]]:
    """Every combination of the template exactly once, in a seeded random order."""
    _check_template(template)
    dims = _dims(template, len(subjects))
    order = np.random.default_rng([seed, TEMPLATES.index(template)]).permutation(int(np.prod(dims)))
    for index in order:
        yield _build(template, _decode(int(index), dims), subjects)


# ----------------------------------------------------------------------------- tokenizer checks


def _n_tokens(texts: Sequence[str], tokenizer) -> list[int]:
    # Counted without special tokens: a BOS (Gemma) adds the same 1 to every prefix.
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _single_token_id(answer: str, tokenizer) -> int | None:
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def _modal_length(lengths: Sequence[int]) -> int:
    counts = Counter(lengths)
    # Ties go to the shorter length so the choice is deterministic.
    return min(counts, key=lambda L: (-counts[L], L))


def _filtered_stream(template: str, seed: int, tokenizer, chunk: int = 512, subjects=SUBJECTS):
    """(key, record, length) for records whose answers are single tokens and whose clean and
    patch prefixes have equal token length."""
    single: dict[str, bool] = {}
    stream = _stream(template, seed, subjects)
    while True:
        batch = [item for _, item in zip(range(chunk), stream)]
        if not batch:
            return
        recs = [r for _, r in batch]
        cl = _n_tokens([r["clean_prefix"] for r in recs], tokenizer)
        pl = _n_tokens([r["patch_prefix"] for r in recs], tokenizer)
        for (key, rec), lc, lp in zip(batch, cl, pl):
            for ans in (rec["clean_answer"], rec["patch_answer"]):
                if ans not in single:
                    single[ans] = _single_token_id(ans, tokenizer) is not None
            if lc == lp and single[rec["clean_answer"]] and single[rec["patch_answer"]]:
                yield key, rec, lc


def _target_pool(template: str, seed: int, tokenizer, cap: int, probe: int = 2000, subjects=SUBJECTS):
    """Up to ``cap`` (key, record) pairs of the template's single most common token length,
    the length being the mode over the first ``probe`` valid records."""
    stream = _filtered_stream(template, seed, tokenizer, subjects=subjects)
    head = [x for _, x in zip(range(probe), stream)]
    if not head:
        raise ValueError(f"{template}: no example has single-token answers and equal "
                         "clean/patch prefix lengths under this tokenizer")
    length = _modal_length([L for _, _, L in head])
    pool = [(k, r) for k, r, L in head if L == length][:cap]
    for k, r, L in stream:
        if len(pool) >= cap:
            break
        if L == length:
            pool.append((k, r))
    return pool, length


def generate_sva(template: str, n: int, *, seed: int = 0, tokenizer=None,
                 split_rule: str = DEFAULT_SPLIT_RULE) -> list[dict]:
    """``n`` distinct records of ``template``, deterministic in ``seed``, from ``split_rule``'s vocabulary
    (:func:`rule_subjects`).

    Without a tokenizer, records are drawn from the full combination space. With one, only
    records with single-token answers, equal clean/patch token lengths and the template's most
    common such length are kept (so token positions align across the examples).
    """
    _check_template(template)
    subjects = rule_subjects(split_rule)
    if n < 0:
        raise ValueError("n must be non-negative")
    if tokenizer is None:
        records = [r for _, (_, r) in zip(range(n), _stream(template, seed, subjects))]
    else:
        records = [r for _, r in _target_pool(template, seed, tokenizer, cap=n, subjects=subjects)[0]]
    if len(records) < n:
        raise ValueError(f"{template}: only {len(records)} distinct records available, asked for {n}")
    return records


def _groups(pool) -> list[list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for key, rec in pool:  # insertion order = the seeded random stream order
        groups.setdefault(key, []).append(rec)
    return list(groups.values())


def _one_per_prefix(recs: list[dict]) -> list[dict]:
    """The first record (in stream order) of each distinct clean prefix."""
    first: dict[str, dict] = {}
    for r in recs:
        first.setdefault(r["clean_prefix"], r)
    return list(first.values())


def _split(pool, n_train: int, n_test: int, seed: int, template: str, split_rule: str,
           min_test_prefixes: int = MIN_TEST_PREFIXES):
    """Whole skeleton groups go to one split, test first; the last group of a split is truncated, never shared.
    Under "prefixes" a test group contributes one record per clean prefix (its other records are left out)."""
    test: list[dict] = []
    train: list[dict] = []
    for recs in _groups(pool):
        if len(test) < n_test:
            take = _one_per_prefix(recs) if split_rule == "prefixes" else recs
            test.extend(take[: n_test - len(test)])
        elif len(train) < n_train:
            train.extend(recs[: n_train - len(train)])
        else:
            break
    if len(test) < n_test or len(train) < n_train:
        raise ValueError(f"{template}: only {len(train)} train / {len(test)} test records "
                         f"reachable, asked for {n_train} / {n_test}")
    if split_rule == "prefixes":
        distinct = len({r["clean_prefix"] for r in test})
        if distinct < min_test_prefixes:
            raise ValueError(f"{template}: the test split holds {distinct} distinct clean prefixes, fewer than "
                             f"{min_test_prefixes}; ask for n_test >= {min_test_prefixes}")
    rng = np.random.default_rng([seed, TEMPLATES.index(template), 1])
    # Shuffle inside each split so records of one group are not adjacent.
    return [train[i] for i in rng.permutation(len(train))], [test[i] for i in rng.permutation(len(test))]


def split_directory(split_rule: str = DEFAULT_SPLIT_RULE) -> str:
    """The packaged folder (``neuronlib/data/files/...``, copied in the repository's ``data/``) holding a split
    rule's files: ``sva_prefixes`` for "prefixes", ``sva`` (the first committed run's files) for "skeleton"."""
    _check_rule(split_rule)
    return "sva" if split_rule == "skeleton" else f"sva_{split_rule}"


def write_sva_files(out_dir: str | Path = "data/sva_prefixes", *, n_train: int = 300, n_test: int = 40,
                    seed: int = 0, tokenizer=None, split_rule: str = DEFAULT_SPLIT_RULE,
                    min_test_prefixes: int = MIN_TEST_PREFIXES) -> dict[str, dict]:
    """Write ``{template}_{train,test}.jsonl`` for every template into ``out_dir``.

    Train and test share no sentence skeleton (the lemmas of the sentence, ignoring numbers and
    the answer pair), hence no clean or patch prefix. ``split_rule`` (:data:`SPLIT_RULES`): "prefixes" puts
    one record per clean prefix in the test split and raises ValueError when a template's test split would hold
    fewer than ``min_test_prefixes`` distinct clean prefixes; "skeleton" is the first committed run's rule (whole
    skeleton groups; regenerates ``data/sva``). With a tokenizer, every record of a template has the same prefix
    token length (see :func:`generate_sva`).
    Returns ``{template: {"n_train", "n_test", "test_prefixes", "length"}}`` (length is None without a tokenizer).
    """
    _check_rule(split_rule)
    subjects = rule_subjects(split_rule)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # A pool several times larger than needed leaves room for whole-group assignment.
    cap = 20 * (n_train + n_test)
    summary = {}
    for template in TEMPLATES:
        if tokenizer is None:
            pool = [x for _, x in zip(range(cap), _stream(template, seed, subjects))]
            length = None
        else:
            pool, length = _target_pool(template, seed, tokenizer, cap=cap, subjects=subjects)
        train, test = _split(pool, n_train, n_test, seed, template, split_rule, min_test_prefixes)
        for split, recs in (("train", train), ("test", test)):
            with open(out / f"{template}_{split}.jsonl", "w") as f:
                for rec in recs:
                    f.write(json.dumps(rec) + "\n")
        summary[template] = {"n_train": len(train), "n_test": len(test),
                             "test_prefixes": len({r["clean_prefix"] for r in test}), "length": length}
    return summary


# ----------------------------------------------------------------------------- loader


@dataclass
class LoadedSVA:
    """What :func:`load_sva` returns.

    ``dataset``: a ``datasets.Dataset`` with columns clean_prefix, patch_prefix, clean_answer,
    patch_answer, case, clean_answer_id, patch_answer_id (extra keys of the file are dropped).
    ``dropped``: rows removed, by reason: ``multi_token_answer`` (clean or patch answer is not
    one token), ``unequal_prefix_length`` (clean and patch prefixes differ in token length),
    ``other_length`` (not the file's most common prefix length). Reasons are checked in that
    order and each row is counted once. ``length``: the kept prefixes' token length (without
    special tokens). ``n_rows_file``: rows in the file.
    """

    dataset: "datasets.Dataset"  # noqa: F821
    dropped: dict[str, int]
    length: int
    path: Path
    n_rows_file: int
    n_available: int = field(default=0)

    def __len__(self) -> int:
        return len(self.dataset)


def _resolve_path(path_or_template, split: str, data_dir) -> Path:
    if str(path_or_template) in TEMPLATES:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        base = Path(data_dir) if data_dir is not None else packaged("sva")
        return base / f"{path_or_template}_{split}.jsonl"
    return Path(path_or_template)


def load_sva(path_or_template, *, tokenizer, split: str = "train", n: int | None = None,
             data_dir: str | Path | None = None) -> LoadedSVA:
    """Load a community-format SVA file (ours or Marks et al.'s) and keep the usable rows.

    ``path_or_template``: a file path, or a template name (then ``{data_dir}/{template}_{split}.jsonl``,
    ``data_dir`` defaulting to the packaged copy of the repository's ``data/sva``). Kept rows: single-token answers,
    equal clean/patch prefix token lengths, and the file's most common length, so that token
    positions align. ``n``: keep the first ``n`` usable rows. Drops are logged as a warning and
    returned in :class:`LoadedSVA` ``.dropped``. Raises ValueError when nothing is usable.
    """
    import datasets  # deferred: importing datasets costs seconds and only the loader needs it

    path = _resolve_path(path_or_template, split, data_dir)
    if not path.exists():
        raise FileNotFoundError(path)
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            missing = [k for k in REQUIRED_KEYS if k not in rec]
            if missing:
                raise ValueError(f"{path}:{lineno}: missing keys {missing}")
            rows.append({k: str(rec[k]) for k in REQUIRED_KEYS})
    if not rows:
        raise ValueError(f"{path}: no SVA records in file")

    dropped = {"multi_token_answer": 0, "unequal_prefix_length": 0, "other_length": 0}
    answer_id: dict[str, int | None] = {}
    for r in rows:
        for a in (r["clean_answer"], r["patch_answer"]):
            if a not in answer_id:
                answer_id[a] = _single_token_id(a, tokenizer)
    cl = _n_tokens([r["clean_prefix"] for r in rows], tokenizer)
    pl = _n_tokens([r["patch_prefix"] for r in rows], tokenizer)
    candidates = []
    for r, lc, lp in zip(rows, cl, pl):
        if answer_id[r["clean_answer"]] is None or answer_id[r["patch_answer"]] is None:
            dropped["multi_token_answer"] += 1
        elif lc != lp:
            dropped["unequal_prefix_length"] += 1
        else:
            candidates.append((r, lc))
    if not candidates:
        raise ValueError(f"{path}: no usable rows of {len(rows)} (dropped {dropped}); every row has "
                         "a multi-token answer or clean/patch prefixes of different token lengths")
    length = _modal_length([L for _, L in candidates])
    kept = []
    for r, L in candidates:
        if L == length:
            kept.append(dict(r, clean_answer_id=answer_id[r["clean_answer"]],
                             patch_answer_id=answer_id[r["patch_answer"]]))
        else:
            dropped["other_length"] += 1
    n_available = len(kept)
    if n is not None:
        if n > n_available:
            logger.warning("%s: asked for %d rows, only %d usable", path, n, n_available)
        kept = kept[:n]
    if any(dropped.values()):
        logger.warning("%s: dropped %d of %d rows %s; kept prefix length %d",
                       path, sum(dropped.values()), len(rows), dropped, length)
    ds = datasets.Dataset.from_list(kept)
    return LoadedSVA(dataset=ds, dropped=dropped, length=length, path=path,
                     n_rows_file=len(rows), n_available=n_available)
