"""A study: every (method, seed) trained, each encoder evaluated once, and the paper's claims
tested on the results. ``records``: the raw results (``results.jsonl``, one ``TrialRecord`` a
line), the claims and the study's facts (``meta.json``). ``stats``: seed-paired differences with
t-intervals, choices made on validation only, gap closure and correlations, with no scipy.
``report``: the results page (Markdown) and its plots. These three import neither torch nor Ray.
"""
