"""The paper's studies, built from neuronlib's verbs: the SVA runner (:mod:`.sva`), the SAE baselines
(:mod:`.sae_baselines`), the case-study pipeline over prompt sets (:mod:`.casestudy`) and its studies: city → state
→ capital (:mod:`.multihop`), city → country → language (:mod:`.languages`) and the appendix case studies
(:mod:`.appendix`); every paper figure (:mod:`.figures`, styled by :mod:`.style`) and the papermill runner behind
``make reproduce`` (:mod:`.reproduce`).

Nothing here is needed to trace your own circuits; it is how this package reproduces the paper.
"""
