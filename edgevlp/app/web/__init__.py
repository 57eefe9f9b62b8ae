"""Watch and steer the camera app from a browser (``edgevlp run ... --serve [HOST:]PORT``).

:class:`edgevlp.app.web.server.WebViewer` runs an aiohttp server on its own thread and event loop beside
the pipeline, which only hands it the latest frame and results (``publish``, never blocking) and applies
the viewers' changes between frames (``take_changes``). The page and its assets are in ``static/``.
"""
