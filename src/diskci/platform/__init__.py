"""The control plane: database, actions, HTTP API, publication processing, netboot, retention."""
