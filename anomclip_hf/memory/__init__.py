"""The visual memory: nearest-neighbour search of a category's reference patches (exact, chunked so peak
memory stays bounded; a bf16 shortlist with an exact re-check). Imports nothing of the package but `io` and
`flags`."""
