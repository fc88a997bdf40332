"""The visual memory: nearest-neighbour search of a category's reference patches (exact, chunked so peak
memory stays bounded; a bf16 shortlist with an exact re-check; faiss' exact index, optional), the greedy
coreset that bounds a large bank (`coreset`, with its coverage radius), the rule choosing exact or coreset
(`policy`) and feature rows spilled to disk while references stream (`rows`). Imports nothing of the package
but `io` and `flags`."""
