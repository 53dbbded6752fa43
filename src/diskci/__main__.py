"""``python -m diskci``: the ``diskci`` command (how supervisors start the runner: ``python -m diskci
runner run``)."""

from diskci.cli.main import main

if __name__ == "__main__":
    main()
