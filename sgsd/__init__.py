"""SGSD: Skill-Conditioned Gated Self-Distillation, the library.

Pure Python + torch pieces of the method (skill bank, retrieval, prompts, objective,
token mask, verifier). Nothing here imports verl, ray or vllm at import time; the verl
glue lives in ``recipe/sgsd``. Import submodules directly, e.g.
``from sgsd.objective import sgsd_objective``.
"""

__version__ = "0.1.0"
