"""The built-in tiny worlds, each with its checker or gold reward.

* `arithmetic`: verifiable arithmetic chains with a label for every step (GRPO, PRM).
* `reviews`: short reviews from a grammar with a known gold reward, and preference pairs
  labelled by the Bradley-Terry model of that reward (reward models, PPO, DPO).
* The 2-D point and 8x8-digit worlds for diffusion live in `minirlhf.diffusion`.
"""
