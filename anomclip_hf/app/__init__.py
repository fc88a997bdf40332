"""`anomclip app`: a Gradio web app to fit a category and inspect its results (also run as a Space by app.py).

    base.py        which base model to load (a CLIP id or folder; offline: the embedded random PIPELINE CHECK base)
    uploads.py     uploaded files copied into the session's folder, with size/count limits and bad files reported
    results.py     a scored set: decisions at any threshold (no re-scoring), scores.csv, the large view
    workspace.py   the server-side state: the model, fit / load / score / zip / push, one fit at a time
    layout.py      the Gradio page wired to the workspace (the only module importing gradio)
    launch.py      build and serve the app (`anomclip app`, app.py)

Everything but layout.py and launch.py is plain Python, tested without a browser.
"""
