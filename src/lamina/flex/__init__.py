"""The flex client: runs an entitled VM image on the user's own laptop.

It never imports ``lamina.server`` or ``lamina.db`` (an import-linter contract holds
this); it speaks to the server over HTTP with the documents of ``lamina.protocol.flex``.

- :mod:`.folder`: the instance folder and its files (written with ``store.atomic``).
- :mod:`.keywrap`: the per-instance disk key wrapped by the user's password; lockout.
- :mod:`.lease`: the offline lease check and the last trusted time.
- :mod:`.nbd`, :mod:`.disk`: the LUKS-encrypted qcow2 written through ``qemu-nbd``.
- :mod:`.qemu`: QEMU's argv from the restrictions, launch and the QMP stop.
- :mod:`.pins`: the server signing keys this laptop trusts, pinned on first use.
- :mod:`.pieces`: the disk fetched piece by piece, checked, written and journaled.
- :mod:`.client`: download, launch, check-in, status and remove.
"""
