"""A verl reward function for end-to-end tests: problems with an even dataset index
succeed, odd ones fail, whatever the (random) tiny model wrote. A CPU run then has a
known mix of successes and failures, so both halves of the skill updater run."""


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    index = int((extra_info or {}).get("index", 1))
    success = index % 2 == 0
    return {"score": 1.0 if success else 0.0, "acc": success, "pred": ""}


def compute_score_by_response(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """Success when the response has an even number of characters: rollouts of the same
    problem differ, so a GRPO group has non-zero advantages whatever the model wrote."""
    success = len(solution_str) % 2 == 0
    return {"score": 1.0 if success else 0.0, "acc": success, "pred": ""}
