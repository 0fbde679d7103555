"""The ``rpcutil`` agent: ping, inventory, facts, stats and safe config reads."""
