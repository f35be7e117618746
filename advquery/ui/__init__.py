"""``advquery ui``: a local web page and a JSON API that protect photos, on the core ``advquery protect`` uses.

Modules: :mod:`.jobs` (the queue of protection jobs), :mod:`.api` (the HTTP API), :mod:`.page` (the
Gradio page) and :mod:`.server` (the app and its private folder). Needs the ``ui`` extra
(``pip install advquery[ui]``).
"""
