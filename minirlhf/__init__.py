"""minirlhf: small, readable, tested implementations of RLHF methods.

See README.md for the map of the package. Every method file imports the shared plumbing
from `lm.py` (language-model log-probs and sampling) and `rl.py` (advantages, surrogates, KL).
"""

__version__ = "0.1.0"
