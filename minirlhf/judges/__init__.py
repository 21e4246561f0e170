"""Judges: models that judge other models' outputs (issue 17, notebooks/10_judges.ipynb).

One file per kind of judge:

* `verdict.py`    generative verifiers: the language model answers "is it right?" and the reward is
                  the probability of the "Y" token (Zhang et al. 2024, "Generative Verifiers").
* `pairwise.py`   LLM-as-judge, pairwise: "which is better, A or B?", judged in both orders; its
                  position bias and length bias (Zheng et al. 2023, "Judging LLM-as-a-judge").
* `rubric.py`     rubric rewards: the reviews world's gold reward split into named criteria, a
                  rule-based judge per criterion, the reward their weighted sum.
* `rubric_learned.py` the same rubric with a learned judge: one small LM answers each criterion's
                  yes/no question, the reward is the weighted sum of its p('Y') (`review-rubric`).
* `online_dpo.py` online / self-rewarding DPO: sample k responses, a judge ranks them, DPO on
                  best-vs-worst, repeat (Guo et al. 2024; Yuan et al. 2024).
* `factory.py`    a `--judge` spec -> a judge function (parse_judge, make_judge), for the CLI and the baselines.
* `build.py`      the zoo step that trains and ships the small judges (`python -m minirlhf.zoo --only judges`).
"""
