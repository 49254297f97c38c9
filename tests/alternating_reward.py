"""A verl reward function for end-to-end tests: problems with an even dataset index
succeed, odd ones fail, whatever the (random) tiny model wrote. A CPU run then has a
known mix of successes and failures, so both halves of the skill updater run."""


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    index = int((extra_info or {}).get("index", 1))
    success = index % 2 == 0
    return {"score": 1.0 if success else 0.0, "acc": success, "pred": ""}
