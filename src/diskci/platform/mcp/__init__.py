"""The MCP server of the platform (the System Concierge's tools): generated from the action catalog.

``server`` builds the tools, ``confirmations`` keeps the one-time confirmations of destructive actions,
``transport`` serves them over stdio (``diskci platform mcp``) and streamable HTTP (``/mcp``).
"""
