"""Every operator action, defined once; HTTP, CLI and MCP are adapters generated from the registry."""
