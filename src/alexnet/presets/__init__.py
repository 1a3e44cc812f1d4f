"""Training presets: small YAML files holding what differs from TrainConfig's defaults (the paper)."""
