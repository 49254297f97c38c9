"""verl 0.9.1 on a CPU: the backend (platform, engines, patches), the ``hf`` rollout server,
the Hydra overrides and environment of a CPU run, and the launcher the demo, tests and
benchmarks share. Nothing here is about SGSD; importing this package imports nothing."""
