"""The paper's studies, built from neuronlib's verbs: the SVA runner (:mod:`.sva`), the SAE baselines
(:mod:`.sae_baselines`), the city → state → capital case study (:mod:`.multihop`), every paper figure
(:mod:`.figures`, styled by :mod:`.style`) and the papermill runner behind ``make reproduce`` (:mod:`.reproduce`).

Nothing here is needed to trace your own circuits; it is how this package reproduces the paper.
"""
