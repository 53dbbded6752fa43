"""Stage 3 artifact families, one module each (kernel, rootimage, ipxe, raw, qcow2, iso, oci); every
module exposes ``stage(ctx)`` and reads the root filesystem tarball of ``ctx.arch_dir``."""
