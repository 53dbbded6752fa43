"""The build definition: the workflow file and the image-build repository.

A platform's image-build repository holds ``platforms/<name>.yaml`` and ``.gitea/workflows/build.yaml``;
the workflow is the one build definition in every mode (Gitea, the embedded CI backend, act on one
machine). ``diskci.ci.workflow`` draws it from a spec; ``diskci.ci.repo`` creates such a repository.
This room knows specs and the diskci command line, never the platform.
"""
