"""OCI publication: push, pull and delete with oras-py; OCI image layout store; media types."""
