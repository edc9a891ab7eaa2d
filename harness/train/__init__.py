"""The SCoRe trainer: config (TrainConfig, presets), rollouts (episodes to masked tokens), objective
(Stage I / II losses), trainer (the loop), plots. Only the CLI imports this package."""
