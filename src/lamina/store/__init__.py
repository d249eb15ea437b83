"""The deduplicated store: keys, chunking, sealed blobs, packs, the catalog contract, backends, gc, check."""
