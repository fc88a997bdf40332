"""Command-line flag types shared by `anomclip` and training/train.py (numeric rules, precision names).
Torch-free, imports nothing of the package: parsers are built from here before anything heavy loads."""
