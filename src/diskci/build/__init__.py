"""The image pipeline: pure functions from inputs to files. Never imports diskci.platform."""
