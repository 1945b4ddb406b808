"""The autoscaler: observed load → target fleet (planner) → decisions (pure `decide`) → reconciler."""
