"""Byte-exact format writers that know no pipeline: EROFS, composefs, the file tree model and its readers,
the object-store ingest, newc cpio and fs-verity."""
