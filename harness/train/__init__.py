"""The SCoRe trainer: config (TrainConfig, presets), policy (the model, its reference, weights export,
checkpoints), rollouts (episodes to masked token rows), logprobs (chunked log-probabilities of the sampled tokens),
objective (Stage I / II losses), state (resume
and the step log), trainer (the loop and the rollout engine), plots. Only the CLI imports this package."""
