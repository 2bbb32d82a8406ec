"""Making a KeyCLD model: the run loop, its keypoint and dynamics phases, losses, resumable
training state, logs, the reward and renderer refits, the pipeline that runs a system's recipe
end to end, the ablations of that recipe, and bundling a model or agent into the package.

May import every floor below it: the base modules, `keycld_gym.sim`, `keycld_gym.data`,
`keycld_gym.model`, `keycld_gym.envs`, the recipes (`agents`), `keycld_gym.rl` (the pipeline
measures the real estimate's noise; bundling checks agents) and `keycld_gym.analysis` (the
pipeline evaluates what it made).
"""
