"""What touches the disk and the outside world, torch-free: atomic writes, bounded reads of untrusted files,
the run lock, image decoding and CLIP pixel arrays, batched decoding, `--base` checks, the PIPELINE CHECK
label. Imports nothing of the package but `flags`."""
