"""Stream specs and the factories that turn a spec into Bronze/Silver/Gold/warehouse assets."""
